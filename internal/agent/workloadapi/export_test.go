package workloadapi

import "time"

// SetJWTCacheClock sets the clock a cache hit of ValidateJWTSVID checks exp,
// nbf and iat with (a miss is go-spiffe's, on time.Now). Call it before Run.
func (s *Server) SetJWTCacheClock(clock func() time.Time) {
	if s.jwtCache != nil {
		s.jwtCache.clock = clock
	}
}

// JWTCacheStats returns how many tokens the cache of ValidateJWTSVID keeps
// and how many calls it answered; zero if it is disabled.
func (s *Server) JWTCacheStats() (entries int, hits uint64) {
	if s.jwtCache == nil {
		return 0, 0
	}
	return s.jwtCache.len(), s.jwtCache.hits.Load()
}

// TransportOptions are the gRPC options of the Workload API's transport,
// for the benchmarks' ceilings to be served the same way.
var TransportOptions = transportOptions
