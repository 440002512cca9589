package credential

// ParseJWKS exposes the JWKS parser to the fuzz target.
func ParseJWKS(data []byte) (keys int, err error) {
	ks, err := parseJWKS(data)
	if err != nil {
		return 0, err
	}
	return len(ks.keys), nil
}
