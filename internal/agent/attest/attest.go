package attest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultProcRoot is where procfs is mounted.
const DefaultProcRoot = "/proc"

// Config configures an Attestor.
type Config struct {
	// ProcRoot is the procfs mount to read callers from; DefaultProcRoot if
	// empty. Tests point it at a fake tree.
	ProcRoot string
	// Clock decides when a remembered user or group name is looked up
	// again (time.Now if nil).
	Clock func() time.Time
	// LookupUser and LookupGroup give the name of a uid or gid ("" for
	// none); os/user's by default. Tests replace them.
	LookupUser, LookupGroup func(id string) string
	// Admit, if set, is asked to admit each connection's caller when it is
	// accepted (admit.Gate.Conn): a refused connection is closed before
	// anything is read from it, and release is called once when an
	// admitted one closes.
	Admit func(Caller) (release func(), err error)
}

// nameTTL is how long a user or group name is remembered: looking one up
// (cgo, or reading /etc/passwd) costs about as much as the rest of an
// attestation, and names change rarely. maxNames bounds the memory.
const (
	nameTTL  = time.Minute
	maxNames = 4096
)

// Attestor turns a unix-socket caller into selectors. It is safe for
// concurrent use.
type Attestor struct {
	procRoot string
	// pidfds is whether connections are bound to their caller through
	// SO_PEERPIDFD: the kernel offers it (Linux 6.5) and procRoot is a real
	// procfs, whose /proc/<pid> handles are tied to their process.
	pidfds   bool
	clock    func() time.Time
	users    nameCache
	groups   nameCache
	admit    func(Caller) (release func(), err error) // Config.Admit
	refusals refusals                                 // tells refused clients why
}

// nameCache remembers the names of ids for nameTTL.
type nameCache struct {
	lookup func(id string) string
	mu     sync.Mutex
	names  map[string]cachedName
}

type cachedName struct {
	name string
	at   time.Time
}

// get returns the name of id and when it was looked up: it may be reused
// from then until nameTTL later.
func (c *nameCache) get(id string, now time.Time) (string, time.Time) {
	c.mu.Lock()
	n, ok := c.names[id]
	c.mu.Unlock()
	if ok && now.Sub(n.at) < nameTTL && !now.Before(n.at) {
		return n.name, n.at
	}
	name := c.lookup(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.names == nil || len(c.names) >= maxNames {
		c.names = make(map[string]cachedName)
	}
	c.names[id] = cachedName{name, now}
	return name, now
}

func lookupUser(id string) string {
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return ""
}

func lookupGroup(id string) string {
	if g, err := user.LookupGroupId(id); err == nil {
		return g.Name
	}
	return ""
}

// New checks cfg and returns an Attestor.
func New(cfg Config) (*Attestor, error) {
	root := cfg.ProcRoot
	if root == "" {
		root = DefaultProcRoot
	}
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("attest: proc root: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("attest: proc root %s is not a directory; point it at the procfs mount", root)
	}
	a := &Attestor{procRoot: root, clock: cfg.Clock, admit: cfg.Admit, users: nameCache{lookup: cfg.LookupUser}, groups: nameCache{lookup: cfg.LookupGroup}}
	a.refusals = newRefusals()
	a.pidfds = isProcfs(root) && peerPidfdsWork()
	if a.clock == nil {
		a.clock = time.Now
	}
	if a.users.lookup == nil {
		a.users.lookup = lookupUser
	}
	if a.groups.lookup == nil {
		a.groups.lookup = lookupGroup
	}
	return a, nil
}

// AttestPeer attests the caller of a gRPC request that arrived on a
// connection accepted through a.TransportCredentials: the process that
// opened the connection, with the uid, gid and supplementary groups the
// kernel recorded when it connected, and the executable it runs now. The
// process must still run, as that uid and gid; a request on a connection
// whose process has exited (and whose pid may now name another process) is
// refused. The selectors are those of Attest, in its order.
//
// The returned slice is shared by the calls on one connection (it is
// rebuilt only when the executable changes or a user or group name is due
// to be looked up again): callers must not modify it.
func (a *Attestor) AttestPeer(ctx context.Context) ([]Selector, error) {
	info, ok := authInfoFromContext(ctx)
	if !ok {
		return nil, errors.New("attest: the request did not arrive through the attestor's transport credentials")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := info.peer
	if p.err != nil {
		return nil, p.err
	}
	// Most executable paths fit; readExe takes a larger buffer if not.
	var small [256]byte
	var exe []byte
	var err error
	if p.bound {
		exe, err = p.readBound(small[:])
	} else {
		exe, err = a.readByPID(p, small[:])
	}
	if err != nil {
		return nil, err
	}
	return a.peerSelectors(p, exe), nil
}

// Attest returns the selectors of process pid, which connected with uid and
// gid as SO_PEERCRED reported them, in this order:
//
//	unix:uid:<uid>
//	unix:user:<name>                 if uid has a name
//	unix:gid:<gid>
//	unix:group:<name>                if gid has a name
//	unix:supplementary_gid:<g>       one per supplementary group, ascending
//	unix:path:<exe>                  the target of /proc/<pid>/exe
//
// Attest reads the supplementary groups from the Groups: line of
// /proc/<pid>/status; AttestPeer uses those the kernel recorded when the
// caller connected. It fails if the process has exited, if its start time
// changes while it is read, if /proc/<pid> is not owned by uid and gid, or
// if any file it needs is missing, oversized or malformed. Attest by pid
// cannot tell a process from a later one given the same pid before the call;
// prefer AttestPeer.
func (a *Attestor) Attest(ctx context.Context, pid int32, uid, gid uint32) ([]Selector, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c := Caller{PID: pid, UID: uid, GID: gid}
	if c.PID <= 0 {
		return nil, fmt.Errorf("attest: the kernel reported pid %d: the caller is not visible in the agent's pid namespace (run the agent in the host's)", c.PID)
	}
	var (
		groups []uint32
		small  [256]byte
		exe    []byte
	)
	err := a.readOneProcess(c.PID, nil, func(dir int) error {
		status, err := readProcFile(dir, c.PID, "status")
		if err != nil {
			return err
		}
		if groups, err = parseStatusGroups(status); err != nil {
			return fmt.Errorf("attest: process %d: status: %w", c.PID, err)
		}
		exe, err = readOwnedExe(dir, c, small[:])
		return err
	})
	if err != nil {
		return nil, err
	}
	sel, _, _ := a.selectors(c, groups, string(exe), a.clock())
	return sel, nil
}

// readOneProcess opens /proc/<pid> and runs read on the handle between two
// reads of the process's start time, so that what read saw is of one
// process: it fails if the two differ, or if the first is not *want (the
// start time recorded when the caller connected, if want is set).
func (a *Attestor) readOneProcess(pid int32, want *uint64, read func(dir int) error) error {
	dir, err := a.openProc(pid)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	before, err := readStartTime(dir, pid)
	if err != nil {
		return err
	}
	if want != nil && before != *want {
		return fmt.Errorf("attest: pid %d now names another process (start time %d, the caller's was %d); the caller has exited", pid, before, *want)
	}
	if err := read(dir); err != nil {
		return err
	}
	after, err := readStartTime(dir, pid)
	if err != nil {
		return err
	}
	if after != before {
		return fmt.Errorf("attest: pid %d changed process while it was read (start time %d, then %d)", pid, before, after)
	}
	return nil
}

// selectors builds the selectors of caller c (see Attest) and returns the
// span [from, until) in which the user and group names in them are fresh.
// The slice has no spare capacity, so an append by a caller that shares it
// cannot write into it.
func (a *Attestor) selectors(c Caller, groups []uint32, exe string, now time.Time) (sel []Selector, from, until time.Time) {
	uid := strconv.FormatUint(uint64(c.UID), 10)
	gid := strconv.FormatUint(uint64(c.GID), 10)
	sel = make([]Selector, 0, 5+len(groups))
	user, userAt := a.users.get(uid, now)
	group, groupAt := a.groups.get(gid, now)
	sel = append(sel, unixSelector("uid", uid))
	if user != "" {
		sel = append(sel, unixSelector("user", user))
	}
	sel = append(sel, unixSelector("gid", gid))
	if group != "" {
		sel = append(sel, unixSelector("group", group))
	}
	for _, g := range groups {
		sel = append(sel, unixSelector("supplementary_gid", strconv.FormatUint(uint64(g), 10)))
	}
	sel = append(sel, unixSelector("path", exe))
	from, until = userAt, userAt.Add(nameTTL)
	if groupAt.After(from) {
		from = groupAt
	}
	if u := groupAt.Add(nameTTL); u.Before(until) {
		until = u
	}
	return slices.Clip(sel), from, until
}

// openProc opens /proc/<pid> as a directory handle that stays bound to the
// process it names.
func (a *Attestor) openProc(pid int32) (int, error) {
	path := filepath.Join(a.procRoot, strconv.Itoa(int(pid)))
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("attest: process %d: %w", pid, procErr(err))
	}
	return fd, nil
}

func readStartTime(dir int, pid int32) (uint64, error) {
	b, err := readProcFile(dir, pid, "stat")
	if err != nil {
		return 0, err
	}
	t, err := parseStatStartTime(b)
	if err != nil {
		return 0, fmt.Errorf("attest: process %d: stat: %w", pid, err)
	}
	return t, nil
}

// readOwnedExe checks that the /proc/<pid> handle dir is owned by c's uid
// and gid (the process's effective ids, when it is dumpable) and reads its
// exe link into buf. The owner is read first: fstat of the handle of a
// process that has gone still answers (with the last owner), readlink then
// fails, so a success of both means the owner was read while the process
// ran.
func readOwnedExe(dir int, c Caller, buf []byte) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(dir, &st); err != nil {
		return nil, fmt.Errorf("attest: process %d: %w", c.PID, procErr(err))
	}
	if st.Uid != c.UID || st.Gid != c.GID {
		return nil, fmt.Errorf("attest: process %d runs as uid %d gid %d, but connected as uid %d gid %d (it changed identity, is not dumpable, or its pid was reused)",
			c.PID, st.Uid, st.Gid, c.UID, c.GID)
	}
	return readExe(dir, c.PID, buf)
}

// procErr names the usual reasons a read under /proc/<pid> fails.
func procErr(err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ESRCH):
		return fmt.Errorf("the process has exited: %w", err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("the agent may not read it (run the agent as root or with CAP_SYS_PTRACE): %w", err)
	}
	return err
}
