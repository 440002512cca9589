// Package store keeps all of a meshfed server's durable state: join tokens,
// registration entries, attested nodes, the audit log of issued certificates,
// this trust domain's CA keys (X.509 and JWT authorities), the bundles of
// federated trust domains and the Istio security policy documents applied to
// the server. A server that restarts, or a second server of the
// same trust domain on the same database, sees everything.
//
// Two back ends share one API and one schema (kept as versioned goose
// migrations, one directory per SQL dialect, applied by Open): SQLite
// (modernc.org/sqlite, pure Go) in the server's data directory by default, and
// Postgres (pgx) for several servers of one trust domain. Times are stored as
// UTC Unix milliseconds, so every time the store returns is UTC with
// millisecond precision.
//
// Concurrency is the database's: a join token is consumed by one conditional
// UPDATE, so of any number of servers racing for it exactly one wins; changes
// to entries, authorities, federated bundles and policies bump a revision
// counter in the same transaction, so a poller that sees a new revision also sees the change.
// Audit rows recorded at the same time are committed together, one commit
// for many issuances; each caller still returns only once its own row is
// committed.
//
// Every input has a documented bound (the Max constants) and is refused with
// an error wrapping ErrInvalid when it is over it. The store never logs or
// returns a database password, and never holds a join token, only its hash.
package store
