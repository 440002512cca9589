// Package attest identifies the process at the other end of a connection to
// the agent's unix socket and describes it as selectors ("unix:uid:1000",
// "unix:path:/usr/bin/envoy") that registration entries are matched against.
//
// Identity comes only from the kernel: what it recorded when the caller
// connected (SO_PEERCRED's pid, uid and gid, SO_PEERGROUPS's supplementary
// groups, SO_PEERPIDFD's pidfd; read by the gRPC transport credentials of
// TransportCredentials), and what procfs says about that process. Nothing the
// caller sends is ever used.
//
// # Binding a connection to its caller
//
// A pid names a process only while it lives: the caller can exit (or hand its
// connection to a child and exit) and another process can be given the same
// number before the agent reads /proc/<pid>. At accept, the transport
// credentials bind the connection to the exact process that connected:
//
//   - they open /proc/<pid> as a directory handle. The kernel ties the handle
//     to the process it was opened for: once that process is gone, reads
//     through it fail instead of reaching a newcomer with the same number;
//   - they then check, through the caller's pidfd (SO_PEERPIDFD, Linux 6.5),
//     that the caller still runs. Its pid was then never free between
//     connect(2) and the open, so the handle is the caller's. A caller that
//     has already gone is refused;
//   - the supplementary groups are those SO_PEERGROUPS (Linux 4.13) recorded
//     at connect, consistent with SO_PEERCRED's uid and gid.
//
// Each request (AttestPeer) then reads, through that handle, only the owner
// of /proc/<pid> (the process's effective uid and gid, which must still be
// those SO_PEERCRED reported) and the exe link: a few microseconds, no
// allocation. A read that fails because the process is gone refuses the
// request: a connection is attested as the process that opened it, never as
// one that inherited it or was given it. The selectors are kept with the
// connection and reused while the executable and the user and group names
// are unchanged.
//
// # Fallbacks
//
// On a kernel without SO_PEERPIDFD (or with it blocked by seccomp), or when
// Config.ProcRoot is not a procfs mount, the connection is not bound. The
// caller's start time (field 22 of /proc/<pid>/stat, clock ticks since boot)
// is recorded right after SO_PEERCRED; each request opens /proc/<pid> again,
// and its start time must equal the recorded one before and after the owner
// and exe are read. What this leaves open is the moment between connect(2)
// and accept(2), and two processes started in the same clock tick under the
// same pid. Without SO_PEERGROUPS, the groups are read once at accept from
// the Groups: line of /proc/<pid>/status.
//
// Attest, which identifies a process by pid alone, reads stat, status
// (for the groups) and exe through one handle and checks that the start time
// does not change meanwhile; it cannot know the process that connected.
//
// A caller that is not dumpable (setuid programs, prctl(PR_SET_DUMPABLE, 0))
// has a root-owned /proc/<pid> and is refused. The agent must be able to read
// /proc/<pid>/exe of its callers (root, CAP_SYS_PTRACE, or the same uid);
// when it cannot, attestation fails rather than return fewer selectors.
//
// # Bounds
//
// Each /proc file read is bounded by MaxProcFileBytes, a symlink target by
// the kernel's PATH_MAX and the supplementary groups by its NGROUPS_MAX; a
// caller whose status exceeds the bound (thousands of supplementary groups)
// is refused where status is read. The parsers have fuzz targets.
//
// The package never trusts data from the caller, never guesses a selector it
// could not read (only user and group names, which need not exist, are
// optional), and never logs.
package attest
