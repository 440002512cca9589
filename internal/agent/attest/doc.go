// Package attest identifies the process at the other end of a connection to
// the agent's unix socket and describes it as selectors ("unix:uid:1000",
// "unix:path:/usr/bin/envoy") that registration entries are matched against.
//
// Identity comes only from the kernel: the uid, gid and pid that SO_PEERCRED
// recorded when the caller connected (read by the gRPC transport credentials
// of TransportCredentials), and what procfs says about that pid. Nothing the
// caller sends is ever used.
//
// # PID reuse
//
// A pid names a process only while it lives: the caller can exit (or hand
// its connection to a child and exit) and another process can be given the
// same number before the agent reads /proc/<pid>. The package guards this the
// way SPIRE's peertracker does, and a little tighter:
//
//   - at accept, right after SO_PEERCRED, the caller's start time (field 22 of
//     /proc/<pid>/stat, clock ticks since boot) is recorded with the
//     connection;
//   - each attestation opens /proc/<pid> once and reads stat, status and exe
//     through that one directory handle. The kernel ties the handle to the
//     process it was opened for: once that process is gone, reads through the
//     handle fail instead of reaching a newcomer with the same number;
//   - the start time read through the handle must equal the one recorded at
//     accept (for AttestPeer) and must not change between the first and the
//     last read;
//   - the owner of /proc/<pid> (the process's effective uid and gid) must be
//     the uid and gid SO_PEERCRED reported.
//
// What remains is the moment between connect(2) and accept(2), and two
// processes started in the same clock tick under the same pid; Linux 6.5's
// SO_PEERPIDFD would close both and is not used yet.
//
// A caller that is not dumpable (setuid programs, prctl(PR_SET_DUMPABLE, 0))
// has a root-owned /proc/<pid> and is refused. The agent must be able to read
// /proc/<pid>/exe of its callers (root, CAP_SYS_PTRACE, or the same uid);
// when it cannot, attestation fails rather than return fewer selectors.
//
// # Bounds
//
// Each /proc file read is bounded by MaxProcFileBytes and a symlink target by
// the kernel's PATH_MAX; a caller whose status exceeds the bound (thousands of
// supplementary groups) is refused. The parsers have fuzz targets.
//
// The package never trusts data from the caller, never guesses a selector it
// could not read (only user and group names, which need not exist, are
// optional), and never logs.
package attest
