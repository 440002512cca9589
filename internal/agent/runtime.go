package agent

import (
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
)

// Defaults of RuntimeConfig. The agent's heap is small (tens of KiB per
// connected workload) and its Workload API answers must be quick: collecting
// less often (GC percent 400 instead of Go's 100) keeps the collector's
// pauses and mark assists off the tail of FetchX509SVID, and the memory limit
// keeps that from growing the heap without bound (docs/performance.md,
// "Agent: the Workload API").
const (
	DefaultGCPercent   = 400
	DefaultMemoryLimit = 256 << 20
)

// RuntimeConfig is the agent process's garbage collector setting. The
// environment wins over both defaults: GOGC and GOMEMLIMIT, when set, are
// left as Go read them, unless the file sets the key explicitly.
type RuntimeConfig struct {
	// GCPercent is the collector's target (GOGC); nil: DefaultGCPercent.
	GCPercent *int `json:"gc_percent"`
	// MemoryLimit is the soft memory limit (GOMEMLIMIT): bytes, or a number
	// with B, KiB, MiB or GiB; "" means DefaultMemoryLimit, "off" none.
	MemoryLimit string `json:"memory_limit"`
}

// RuntimeApplied says what ApplyRuntime set, for the start-up log line.
type RuntimeApplied struct {
	GCPercent   int
	MemoryLimit int64 // math.MaxInt64 when none
	FromEnv     []string
}

// ApplyRuntime sets the process's GC percent and memory limit from r,
// leaving what the environment (getenv) sets alone unless r names it.
func ApplyRuntime(r RuntimeConfig, getenv func(string) string) (RuntimeApplied, error) {
	var out RuntimeApplied
	limit := int64(DefaultMemoryLimit)
	switch m := strings.TrimSpace(r.MemoryLimit); {
	case m == "" && getenv("GOMEMLIMIT") != "":
		limit = -1
		out.FromEnv = append(out.FromEnv, "GOMEMLIMIT")
	case m == "":
	case strings.EqualFold(m, "off"):
		limit = 1<<63 - 1
	default:
		n, err := ParseBytes(m)
		if err != nil {
			return out, fmt.Errorf("agent: runtime.memory_limit: %w", err)
		}
		limit = n
	}
	gc := DefaultGCPercent
	switch {
	case r.GCPercent != nil:
		if *r.GCPercent < -1 || *r.GCPercent == 0 {
			return out, fmt.Errorf("agent: runtime.gc_percent %d: use a positive percentage, or -1 to turn the collector off (only sensible with memory_limit)", *r.GCPercent)
		}
		gc = *r.GCPercent
	case getenv("GOGC") != "":
		gc = -2
		out.FromEnv = append(out.FromEnv, "GOGC")
	}
	if gc != -2 {
		debug.SetGCPercent(gc)
	}
	if limit != -1 {
		debug.SetMemoryLimit(limit)
	}
	out.GCPercent = debug.SetGCPercent(-1)
	debug.SetGCPercent(out.GCPercent)
	out.MemoryLimit = debug.SetMemoryLimit(-1)
	return out, nil
}

// ParseBytes reads a size: a number of bytes, optionally followed by B,
// KiB, MiB or GiB (also KB, MB, GB as powers of 1000), as GOMEMLIMIT does.
func ParseBytes(size string) (int64, error) {
	s := strings.TrimSpace(size)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a size: use bytes, or a number with KiB, MiB or GiB", size)
	}
	if n > (1<<63-1)/mult {
		return 0, fmt.Errorf("%q is too large", size)
	}
	return n * mult, nil
}
