package attest

import (
	"context"
	"os"
	"testing"
)

// BenchmarkAttest is the cost of attesting one caller (this process) from
// the real /proc: what every Workload API and SDS call pays.
func BenchmarkAttest(b *testing.B) {
	a, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	pid, uid, gid := int32(os.Getpid()), uint32(os.Getuid()), uint32(os.Getgid())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Attest(context.Background(), pid, uid, gid); err != nil {
			b.Fatal(err)
		}
	}
}
