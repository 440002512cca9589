package agent

import "github.com/meshfed/meshfed/internal/procruntime"

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

// RuntimeConfig is the agent process's garbage collector setting (the
// "runtime" section). The environment wins over both defaults: GOGC and
// GOMEMLIMIT, when set, are left as Go read them, unless the file sets the
// key explicitly.
type RuntimeConfig = procruntime.Config

// RuntimeApplied says what ApplyRuntime set, for the start-up log line.
type RuntimeApplied = procruntime.Applied

// ApplyRuntime sets the process's GC percent and memory limit from r,
// leaving what the environment (getenv) sets alone unless r names it.
func ApplyRuntime(r RuntimeConfig, getenv func(string) string) (RuntimeApplied, error) {
	return procruntime.Apply("agent", r, procruntime.Defaults{GCPercent: DefaultGCPercent, MemoryLimit: DefaultMemoryLimit}, getenv)
}
