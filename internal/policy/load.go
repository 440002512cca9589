package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	secv1beta1 "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"
)

// Bounds on untrusted policy input. A policy directory is written by people;
// these are far above what a real mesh holds and stop a runaway file or a
// YAML bomb from exhausting memory.
const (
	// MaxFileSize bounds one policy file (1 MiB, kubectl's own limit for an
	// object stored in etcd is 1.5 MiB).
	MaxFileSize = 1 << 20
	// MaxDocumentsPerFile bounds the YAML documents in one file.
	MaxDocumentsPerFile = 256
	// MaxDocuments bounds the documents of a whole directory.
	MaxDocuments = 4096
	// MaxFiles bounds the policy files read from one directory.
	MaxFiles = 1024
)

// DefaultRootNamespace is Istio's default root namespace: policies stored in
// it apply mesh-wide.
const DefaultRootNamespace = "istio-system"

// Kind is the kind of an Istio security resource.
type Kind string

// The kinds this package reads.
const (
	KindPeerAuthentication    Kind = "PeerAuthentication"
	KindRequestAuthentication Kind = "RequestAuthentication"
	KindAuthorizationPolicy   Kind = "AuthorizationPolicy"
)

// Document is one parsed policy resource.
type Document struct {
	Kind        Kind
	Name        string
	Namespace   string
	Created     time.Time // metadata.creationTimestamp; zero when not given
	Annotations map[string]string
	File        string // as given to Parse
	Line        int    // first line of the document in File
	Index       int    // position of the document in File, from 0

	// Exactly one of these is set, according to Kind.
	Peer    *secv1beta1.PeerAuthentication
	Request *secv1beta1.RequestAuthentication
	Authz   *secv1beta1.AuthorizationPolicy

	jwks []*jose.JSONWebKeySet // RequestAuthentication: inline jwks per rule, nil for jwksUri
	ref  string                // Ref, kept by NewSet
}

// Ref names the document as "namespace/name".
func (d *Document) Ref() string {
	if d.ref != "" {
		return d.ref
	}
	return d.Namespace + "/" + d.Name
}

// Where names the document's file and line.
func (d *Document) Where() string { return fmt.Sprintf("%s:%d", d.File, d.Line) }

// older orders documents oldest first, which is how Istio breaks ties
// between policies: by metadata.creationTimestamp when given (a document with
// a timestamp is older than any without one), then by file name, then by
// position in the file.
func older(a, b *Document) bool {
	at, bt := !a.Created.IsZero(), !b.Created.IsZero()
	if at != bt {
		return at
	}
	if at && !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	if a.File != b.File {
		return a.File < b.File
	}
	return a.Index < b.Index
}

// Option changes how policy is loaded.
type Option func(*options)

type options struct {
	root      string
	skipOther bool
}

// WithRootNamespace sets the mesh's root namespace (default istio-system).
func WithRootNamespace(ns string) Option { return func(o *options) { o.root = ns } }

// SkipOtherKinds makes LoadDir skip documents of kinds other than the three
// security kinds instead of refusing them.
func SkipOtherKinds() Option { return func(o *options) { o.skipOther = true } }

func newOptions(opts []Option) options {
	o := options{root: DefaultRootNamespace}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// errOtherKind marks a document of a kind this package does not read.
var errOtherKind = errors.New("not a security.istio.io policy kind")

// LoadDir reads every *.yaml, *.yml and *.json file directly in dir (not
// its subdirectories, as 'kubectl apply -f dir'), in file-name order, and
// returns the policy set. Any bad document fails the whole load.
func LoadDir(dir string, opts ...Option) (*Set, error) {
	docs, err := ReadDir(dir, opts...)
	if err != nil {
		return nil, err
	}
	return NewSet(docs, opts...)
}

// ReadDir parses the policy files of dir as LoadDir does and returns their
// documents, for a caller that combines them with documents from elsewhere
// before NewSet.
func ReadDir(dir string, opts ...Option) ([]Document, error) {
	o := newOptions(opts)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var docs []Document
	files := 0
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		if files++; files > MaxFiles {
			return nil, fmt.Errorf("policy: %s: more than %d policy files", dir, MaxFiles)
		}
		path := filepath.Join(dir, e.Name())
		data, err := readBounded(path)
		if err != nil {
			return nil, err
		}
		d, err := parse(path, data, o)
		if err != nil {
			return nil, err
		}
		docs = append(docs, d...)
		if len(docs) > MaxDocuments {
			return nil, fmt.Errorf("policy: %s: more than %d documents", dir, MaxDocuments)
		}
	}
	return docs, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxFileSize+1)); err != nil {
		return nil, fmt.Errorf("policy: %s: %w", path, err)
	}
	if buf.Len() > MaxFileSize {
		return nil, fmt.Errorf("policy: %s: larger than %d bytes", path, MaxFileSize)
	}
	return buf.Bytes(), nil
}

// Parse reads one file of multi-document YAML (or JSON). Documents of other
// kinds are refused. The name is used in error messages and for ordering.
func Parse(name string, data []byte) ([]Document, error) {
	return parse(name, data, newOptions(nil))
}

func parse(name string, data []byte, o options) ([]Document, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("policy: %s: larger than %d bytes", name, MaxFileSize)
	}
	var docs []Document
	for i, part := range splitDocuments(data) {
		if i >= MaxDocumentsPerFile {
			return nil, fmt.Errorf("policy: %s: more than %d documents", name, MaxDocumentsPerFile)
		}
		d, err := parseDocument(name, part, len(docs))
		if errors.Is(err, errOtherKind) && o.skipOther {
			continue
		}
		if err != nil {
			return nil, err
		}
		if d == nil {
			continue
		}
		docs = append(docs, *d)
	}
	return docs, nil
}

type rawPart struct {
	text []byte
	line int // line of the part's first line
}

// splitDocuments cuts YAML at lines that are a document separator ("---",
// optionally followed by a comment). Parts with nothing but blank lines and
// comments are dropped.
func splitDocuments(data []byte) []rawPart {
	var parts []rawPart
	start, startLine := 0, 1
	line := 1
	flush := func(end int) {
		p := data[start:end]
		if !isEmptyYAML(p) {
			parts = append(parts, rawPart{text: p, line: startLine})
		}
	}
	for pos := 0; pos <= len(data); {
		nl := bytes.IndexByte(data[pos:], '\n')
		end := len(data)
		if nl >= 0 {
			end = pos + nl
		}
		l := bytes.TrimRight(data[pos:end], "\r")
		if bytes.HasPrefix(l, []byte("---")) && (len(l) == 3 || l[3] == ' ' || l[3] == '\t') {
			flush(pos)
			start, startLine = min(end+1, len(data)), line+1
		}
		if nl < 0 {
			break
		}
		pos = end + 1
		line++
	}
	flush(len(data))
	return parts
}

func isEmptyYAML(p []byte) bool {
	for _, l := range bytes.Split(p, []byte("\n")) {
		l = bytes.TrimSpace(l)
		if len(l) > 0 && l[0] != '#' {
			return false
		}
	}
	return true
}

// docError is the uniform error for a bad document.
func docError(file string, line int, what, path, msg string) error {
	if path != "" {
		msg = path + ": " + msg
	}
	if what != "" {
		msg = what + ": " + msg
	}
	return fmt.Errorf("policy: %s:%d: %s", file, line, msg)
}

type envelope struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   json.RawMessage `json:"metadata"`
	Spec       json.RawMessage `json:"spec"`
	Status     json.RawMessage `json:"status"`
}

type metadata struct {
	Name              string            `json:"name"`
	Namespace         string            `json:"namespace"`
	CreationTimestamp *string           `json:"creationTimestamp"`
	Labels            map[string]string `json:"labels"`
	Annotations       map[string]string `json:"annotations"`
	UID               string            `json:"uid"`
	ResourceVersion   string            `json:"resourceVersion"`
	Generation        int64             `json:"generation"`
}

func strictDecode(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

func parseDocument(file string, part rawPart, index int) (*Document, error) {
	js, err := yaml.YAMLToJSON(part.text)
	if err != nil {
		return nil, docError(file, part.line, "", "", "not YAML: "+strings.TrimPrefix(err.Error(), "error converting YAML to JSON: "))
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) {
		return nil, nil
	}
	var env envelope
	if err := strictDecode(js, &env); err != nil {
		return nil, docError(file, part.line, "", "", "not a Kubernetes object: "+jsonErr(err))
	}
	kind := Kind(env.Kind)
	if env.Kind == "" {
		return nil, docError(file, part.line, "", "", "no kind")
	}
	if env.APIVersion != "security.istio.io/v1beta1" && env.APIVersion != "security.istio.io/v1" {
		return nil, otherKindError(file, part.line, env.APIVersion, env.Kind)
	}
	switch kind {
	case KindPeerAuthentication, KindRequestAuthentication, KindAuthorizationPolicy:
	default:
		return nil, otherKindError(file, part.line, env.APIVersion, env.Kind)
	}
	var md metadata
	if len(env.Metadata) == 0 {
		return nil, docError(file, part.line, env.Kind, "", "no metadata")
	}
	if err := strictDecode(env.Metadata, &md); err != nil {
		return nil, docError(file, lineOf(part, []string{"metadata"}), env.Kind, "metadata", jsonErr(err))
	}
	if md.Name == "" {
		return nil, docError(file, part.line, env.Kind, "metadata.name", "required")
	}
	if md.Namespace == "" {
		md.Namespace = "default" // as kubectl apply without -n
	}
	d := &Document{Kind: kind, Name: md.Name, Namespace: md.Namespace, Annotations: md.Annotations, File: file, Line: part.line, Index: index}
	what := fmt.Sprintf("%s %s", kind, d.Ref())
	if md.CreationTimestamp != nil && *md.CreationTimestamp != "" {
		t, err := time.Parse(time.RFC3339, *md.CreationTimestamp)
		if err != nil {
			return nil, docError(file, lineOf(part, []string{"metadata", "creationTimestamp"}), what, "metadata.creationTimestamp", "not an RFC 3339 time")
		}
		d.Created = t
	}
	spec := []byte(env.Spec)
	if len(spec) == 0 || bytes.Equal(spec, []byte("null")) {
		spec = []byte("{}")
	}
	var msg proto.Message
	switch kind {
	case KindPeerAuthentication:
		d.Peer = &secv1beta1.PeerAuthentication{}
		msg = d.Peer
	case KindRequestAuthentication:
		d.Request = &secv1beta1.RequestAuthentication{}
		msg = d.Request
	case KindAuthorizationPolicy:
		d.Authz = &secv1beta1.AuthorizationPolicy{}
		msg = d.Authz
	}
	var generic any
	if err := json.Unmarshal(spec, &generic); err != nil {
		return nil, docError(file, part.line, what, "spec", jsonErr(err))
	}
	if path, m := checkFields("spec", generic, msg.ProtoReflect().Descriptor()); m != "" {
		return nil, docError(file, lineOf(part, pathKeys(path)), what, path, m)
	}
	if err := (protojson.UnmarshalOptions{}).Unmarshal(spec, msg); err != nil {
		return nil, docError(file, lineOf(part, []string{"spec"}), what, "spec", strings.TrimPrefix(err.Error(), "proto: "))
	}
	var path, m string
	switch kind {
	case KindPeerAuthentication:
		path, m = validatePeer(d.Peer)
	case KindRequestAuthentication:
		path, m = validateRequest(d)
	case KindAuthorizationPolicy:
		path, m = validateAuthz(d.Authz)
	}
	if m != "" {
		return nil, docError(file, lineOf(part, pathKeys(path)), what, path, m)
	}
	return d, nil
}

func otherKindError(file string, line int, apiVersion, kind string) error {
	return fmt.Errorf("policy: %s:%d: %s %s: %w: give only PeerAuthentication, RequestAuthentication and AuthorizationPolicy (or skip other kinds)", file, line, apiVersion, kind, errOtherKind)
}

func jsonErr(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "json: ")
	return s
}

// checkFields walks decoded JSON against the proto descriptor so that an
// unknown field or enum value is named with its full path, e.g.
// spec.rules[0].from[0].source.principal.
func checkFields(path string, v any, md protoreflect.MessageDescriptor) (string, string) {
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return "", "" // well-known types (Duration) have their own JSON forms
	}
	if v == nil {
		return "", ""
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return path, "must be an object"
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fd := md.Fields().ByJSONName(k)
		if fd == nil {
			fd = md.Fields().ByTextName(k)
		}
		p := path + "." + k
		if fd == nil {
			return p, "unknown field"
		}
		val := obj[k]
		if val == nil {
			continue
		}
		switch {
		case fd.IsMap():
			m, ok := val.(map[string]any)
			if !ok {
				return p, "must be an object"
			}
			mk := make([]string, 0, len(m))
			for x := range m {
				mk = append(mk, x)
			}
			sort.Strings(mk)
			for _, x := range mk {
				if pp, msg := checkValue(p+"."+x, m[x], fd.MapValue()); msg != "" {
					return pp, msg
				}
			}
		case fd.IsList():
			l, ok := val.([]any)
			if !ok {
				return p, "must be a list"
			}
			for i, e := range l {
				if pp, msg := checkValue(fmt.Sprintf("%s[%d]", p, i), e, fd); msg != "" {
					return pp, msg
				}
			}
		default:
			if pp, msg := checkValue(p, val, fd); msg != "" {
				return pp, msg
			}
		}
	}
	return "", ""
}

func checkValue(path string, v any, fd protoreflect.FieldDescriptor) (string, string) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return checkFields(path, v, fd.Message())
	case protoreflect.EnumKind:
		s, ok := v.(string)
		if !ok {
			return "", "" // numbers: protojson checks them
		}
		if fd.Enum().Values().ByName(protoreflect.Name(s)) == nil {
			return path, fmt.Sprintf("unknown value %q", s)
		}
	}
	return "", ""
}

// pathKeys turns "spec.rules[0].from" into the mapping keys to look for.
func pathKeys(path string) []string {
	var keys []string
	for _, p := range strings.Split(path, ".") {
		if i := strings.IndexByte(p, '['); i >= 0 {
			p = p[:i]
		}
		if p != "" {
			keys = append(keys, p)
		}
	}
	return keys
}

// lineOf finds the line of a field by looking for each key of its path in
// turn, each after the previous one; it falls back to the document's first
// line. YAML flow style or repeated keys can make it point at the right
// document but a nearby line.
func lineOf(part rawPart, keys []string) int {
	lines := strings.Split(string(part.text), "\n")
	at := 0
	found := -1
	for _, k := range keys {
		hit := false
		for i := at; i < len(lines); i++ {
			t := strings.TrimLeft(lines[i], " \t-")
			if strings.HasPrefix(t, k+":") || strings.HasPrefix(t, `"`+k+`":`) {
				at, found, hit = i, i, true
				break
			}
		}
		if !hit {
			break
		}
	}
	if found < 0 {
		return part.line
	}
	return part.line + found
}

// validatePeer applies Istio's validation of a PeerAuthentication.
func validatePeer(p *secv1beta1.PeerAuthentication) (string, string) {
	for port := range p.GetPortLevelMtls() {
		if port == 0 || port > 65535 {
			return fmt.Sprintf("spec.portLevelMtls.%d", port), "port must be between 1 and 65535"
		}
	}
	return "", ""
}

// validateRequest applies Istio's validation of a RequestAuthentication and
// parses inline JWKS.
func validateRequest(d *Document) (string, string) {
	r := d.Request
	if len(r.GetTargetRefs()) > 0 || r.GetTargetRef() != nil {
		return "spec.targetRefs", "not supported: meshfed applies policy to workloads by selector; use spec.selector"
	}
	for i, rule := range r.GetJwtRules() {
		p := fmt.Sprintf("spec.jwtRules[%d]", i)
		if rule.GetIssuer() == "" {
			return p + ".issuer", "required"
		}
		if rule.GetJwks() != "" && rule.GetJwksUri() != "" {
			return p, "set only one of jwks and jwksUri"
		}
		for j, h := range rule.GetFromHeaders() {
			if h.GetName() == "" {
				return fmt.Sprintf("%s.fromHeaders[%d].name", p, j), "required"
			}
		}
		var set *jose.JSONWebKeySet
		if rule.GetJwks() != "" {
			var err error
			if set, err = parseJWKS([]byte(rule.GetJwks())); err != nil {
				return p + ".jwks", err.Error()
			}
		}
		d.jwks = append(d.jwks, set)
	}
	return "", ""
}

// Condition keys of AuthorizationPolicy (Istio's "Authorization Policy
// Conditions" reference). httpOnly marks those Istio documents as HTTP only.
var conditionKeys = map[string]struct{ httpOnly bool }{
	"source.ip":              {},
	"remote.ip":              {},
	"source.namespace":       {},
	"source.principal":       {},
	"source.serviceAccount":  {},
	"request.auth.principal": {httpOnly: true},
	"request.auth.audiences": {httpOnly: true},
	"request.auth.presenter": {httpOnly: true},
	"destination.ip":         {},
	"destination.port":       {},
	"connection.sni":         {},
}

func validateAuthz(a *secv1beta1.AuthorizationPolicy) (string, string) {
	if len(a.GetTargetRefs()) > 0 || a.GetTargetRef() != nil {
		return "spec.targetRefs", "not supported: meshfed applies policy to workloads by selector; use spec.selector"
	}
	if a.GetAction() == secv1beta1.AuthorizationPolicy_CUSTOM {
		return "spec.action", "CUSTOM is not supported: meshfed has no external authorizer to delegate to"
	}
	if a.GetProvider() != nil {
		return "spec.provider", "only valid with action CUSTOM"
	}
	for i, r := range a.GetRules() {
		p := fmt.Sprintf("spec.rules[%d]", i)
		for j, f := range r.GetFrom() {
			fp := fmt.Sprintf("%s.from[%d].source", p, j)
			s := f.GetSource()
			if s == nil || proto.Size(s) == 0 {
				return fp, "must not be empty"
			}
			for _, l := range [][]string{s.GetIpBlocks(), s.GetNotIpBlocks(), s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks()} {
				for _, v := range l {
					if _, err := parseIPBlock(v); err != nil {
						return fp, err.Error()
					}
				}
			}
			if (len(s.GetServiceAccounts()) > 0 || len(s.GetNotServiceAccounts()) > 0) && (len(s.GetPrincipals()) > 0 || len(s.GetNotPrincipals()) > 0 || len(s.GetNamespaces()) > 0 || len(s.GetNotNamespaces()) > 0) {
				return fp, "serviceAccounts cannot be set with principals or namespaces"
			}
			for _, v := range slices.Concat(s.GetServiceAccounts(), s.GetNotServiceAccounts()) {
				if strings.Contains(v, "*") {
					return fp + ".serviceAccounts", fmt.Sprintf("%q: no wildcard is allowed", v)
				}
			}
		}
		for j, t := range r.GetTo() {
			tp := fmt.Sprintf("%s.to[%d].operation", p, j)
			o := t.GetOperation()
			if o == nil || proto.Size(o) == 0 {
				return tp, "must not be empty"
			}
			for _, v := range slices.Concat(o.GetPorts(), o.GetNotPorts()) {
				if _, err := parsePort(v); err != nil {
					return tp + ".ports", err.Error()
				}
			}
			for _, v := range slices.Concat(o.GetPaths(), o.GetNotPaths()) {
				if strings.ContainsAny(v, "{}") {
					return tp + ".paths", fmt.Sprintf("%q: path templates ({*}, {**}) are not supported", v)
				}
			}
		}
		for j, c := range r.GetWhen() {
			cp := fmt.Sprintf("%s.when[%d]", p, j)
			if len(c.GetValues()) == 0 && len(c.GetNotValues()) == 0 {
				return cp, "at least one of values or notValues must be set"
			}
			k, err := parseKey(c.GetKey())
			if err != nil {
				return cp + ".key", err.Error()
			}
			for _, v := range slices.Concat(c.GetValues(), c.GetNotValues()) {
				switch k.name {
				case "source.ip", "remote.ip", "destination.ip":
					if _, err := parseIPBlock(v); err != nil {
						return cp + ".values", err.Error()
					}
				case "destination.port":
					if _, err := parsePort(v); err != nil {
						return cp + ".values", err.Error()
					}
				}
			}
		}
	}
	return "", ""
}

func parsePort(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (0-65535)", s)
	}
	return uint32(n), nil
}

func parseIPBlock(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR block", s)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR block", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
