package server

// ProcsFor is the GOMAXPROCS the server runs with on backend, given the
// runtime's current value and the GOMAXPROCS environment variable: one above
// the current value on SQLite, unless the environment chose.
//
// SQLite (modernc.org/sqlite, in this process) makes its commit's fsync as a
// blocking system call, and the Go scheduler leaves that thread's P attached
// to it until sysmon retakes it, which it does lazily: during most of every
// commit one P of two sat idle, and issuance on a 2-CPU machine ran 22-26%
// faster with one P more, at the same CPU per issuance (docs/performance.md,
// "A P held by the fsync"). Postgres's fsync is in its own process.
func ProcsFor(backend string, current int, env string) (int, bool) {
	if backend != "sqlite" || env != "" {
		return current, false
	}
	return current + 1, true
}

// Datastore names the store's back end: "sqlite" or "postgres".
func (s *Server) Datastore() string { return s.store.Backend() }

// streamWorkers is how many goroutines of the signing API's gRPC server
// serve requests and are kept between them: as many as agents a server of
// one domain commonly has renewing at once on a busy node pool.
const streamWorkers = 64
