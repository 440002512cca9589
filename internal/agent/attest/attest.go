package attest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
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
	clock    func() time.Time
	users    nameCache
	groups   nameCache
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

func (c *nameCache) get(id string, now time.Time) string {
	c.mu.Lock()
	n, ok := c.names[id]
	c.mu.Unlock()
	if ok && now.Sub(n.at) < nameTTL && !now.Before(n.at) {
		return n.name
	}
	name := c.lookup(id)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.names == nil || len(c.names) >= maxNames {
		c.names = make(map[string]cachedName)
	}
	c.names[id] = cachedName{name, now}
	return name
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
	a := &Attestor{procRoot: root, clock: cfg.Clock, users: nameCache{lookup: cfg.LookupUser}, groups: nameCache{lookup: cfg.LookupGroup}}
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
// connection accepted through a.TransportCredentials. Besides what Attest
// checks, the caller's start time must still be the one recorded when the
// connection was accepted, so a request on a connection whose process has
// gone and whose pid now names another process is refused.
func (a *Attestor) AttestPeer(ctx context.Context) ([]Selector, error) {
	info, ok := authInfoFromContext(ctx)
	if !ok {
		return nil, errors.New("attest: the request did not arrive through the attestor's transport credentials")
	}
	if info.startErr != nil {
		return nil, fmt.Errorf("attest: process %d could not be read when it connected: %w", info.caller.PID, info.startErr)
	}
	return a.attest(ctx, info.caller, &info.startTime)
}

// Attest returns the selectors of process pid, which connected with uid and
// gid as SO_PEERCRED reported them, in this order:
//
//	unix:uid:<uid>
//	unix:user:<name>                 if uid has a name
//	unix:gid:<gid>
//	unix:group:<name>                if gid has a name
//	unix:supplementary_gid:<g>       one per group on the Groups: line of /proc/<pid>/status
//	unix:path:<exe>                  the target of /proc/<pid>/exe
//
// It fails if the process has exited, if its start time changes while it is
// read, if /proc/<pid> is not owned by uid and gid, or if any file it needs
// is missing, oversized or malformed.
func (a *Attestor) Attest(ctx context.Context, pid int32, uid, gid uint32) ([]Selector, error) {
	return a.attest(ctx, Caller{PID: pid, UID: uid, GID: gid}, nil)
}

// attest reads the caller through one handle on /proc/<pid>. atAccept, if
// set, is the start time recorded when the caller connected.
func (a *Attestor) attest(ctx context.Context, c Caller, atAccept *uint64) ([]Selector, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.PID <= 0 {
		return nil, fmt.Errorf("attest: the kernel reported pid %d: the caller is not visible in the agent's pid namespace (run the agent in the host's)", c.PID)
	}
	dir, err := a.openProc(c.PID)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)

	before, err := readStartTime(dir, c.PID)
	if err != nil {
		return nil, err
	}
	if atAccept != nil && before != *atAccept {
		return nil, fmt.Errorf("attest: pid %d now names another process (start time %d, the caller's was %d); the caller has exited", c.PID, before, *atAccept)
	}
	status, err := readProcFile(dir, c.PID, "status")
	if err != nil {
		return nil, err
	}
	groups, err := parseStatusGroups(status)
	if err != nil {
		return nil, fmt.Errorf("attest: process %d: status: %w", c.PID, err)
	}
	exe, err := readProcLink(dir, c.PID, "exe")
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(dir, &st); err != nil {
		return nil, fmt.Errorf("attest: process %d: %w", c.PID, procErr(err))
	}
	if st.Uid != c.UID || st.Gid != c.GID {
		return nil, fmt.Errorf("attest: process %d runs as uid %d gid %d, but connected as uid %d gid %d (it changed identity, is not dumpable, or its pid was reused)",
			c.PID, st.Uid, st.Gid, c.UID, c.GID)
	}
	after, err := readStartTime(dir, c.PID)
	if err != nil {
		return nil, err
	}
	if after != before {
		return nil, fmt.Errorf("attest: pid %d changed process while it was read (start time %d, then %d)", c.PID, before, after)
	}

	uid := strconv.FormatUint(uint64(c.UID), 10)
	gid := strconv.FormatUint(uint64(c.GID), 10)
	sel := make([]Selector, 0, 5+len(groups))
	now := a.clock()
	sel = append(sel, unixSelector("uid", uid))
	if name := a.users.get(uid, now); name != "" {
		sel = append(sel, unixSelector("user", name))
	}
	sel = append(sel, unixSelector("gid", gid))
	if name := a.groups.get(gid, now); name != "" {
		sel = append(sel, unixSelector("group", name))
	}
	for _, g := range groups {
		sel = append(sel, unixSelector("supplementary_gid", strconv.FormatUint(uint64(g), 10)))
	}
	sel = append(sel, unixSelector("path", exe))
	return sel, nil
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

// startTime reads the start time of pid by path; the transport credentials
// call it at accept.
func (a *Attestor) startTime(pid int32) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("attest: the kernel reported pid %d: the caller is not visible in the agent's pid namespace", pid)
	}
	dir, err := a.openProc(pid)
	if err != nil {
		return 0, err
	}
	defer unix.Close(dir)
	return readStartTime(dir, pid)
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
