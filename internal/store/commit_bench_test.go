package store

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"syscall"
	"testing"
	"time"
)

// BenchmarkInsertIssued measures one audit commit on SQLite
// (synchronous=FULL, in a temporary directory on the test machine's disk)
// with 1 to 32 rows in it, as the group commit writes them: ns/op and
// cpu-ns/op are per commit, cpu-ns/row the process's CPU time (user+system,
// the fsync's included) per row. What a commit costs beyond its rows is
// what a larger batch saves.
func BenchmarkInsertIssued(b *testing.B) {
	for _, n := range []int{1, 2, 4, 8, 16, 32} {
		b.Run(fmt.Sprintf("rows=%d", n), func(b *testing.B) {
			s := openBenchStore(b)
			rows := make([]*auditRow, n)
			serial := 0
			cpu := benchCPU()
			b.ResetTimer()
			for b.Loop() {
				for i := range rows {
					serial++
					rows[i] = &auditRow{Issued: benchRow(fmt.Sprintf("%x", serial), serial)}
				}
				if err := s.writeAudit(context.Background(), rows); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			used := benchCPU() - cpu
			b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(used.Nanoseconds())/float64(b.N*n), "cpu-ns/row")
		})
	}
}

// BenchmarkInsertIssuedSerials measures what the order of serial numbers
// costs an audit commit of 16 rows into a table already holding 32 000 (the
// log of a few seconds at full speed): random 128-bit serials, as meshfed
// issued until pki put the signing time in front of them, against
// time-ordered ones of the same length (pki's layout, a row counter standing
// for the milliseconds, then random bits). A random serial lands on a random
// page of the serial index, so each row of a commit writes a page of its own
// to the WAL; ordered ones share the index's last page.
func BenchmarkInsertIssuedSerials(b *testing.B) {
	const perCommit, prefill = 16, 32000
	for _, order := range []string{"random", "time-ordered"} {
		b.Run("serials="+order, func(b *testing.B) {
			s := openBenchStore(b)
			n := 0
			commit := func() {
				rows := make([]*auditRow, perCommit)
				for i := range rows {
					n++
					var serial [16]byte
					if _, err := rand.Read(serial[:]); err != nil {
						b.Fatal(err)
					}
					if order == "time-ordered" {
						binary.BigEndian.PutUint64(serial[:8], uint64(n))
					}
					rows[i] = &auditRow{Issued: benchRow(hex.EncodeToString(serial[:]), n)}
				}
				if err := s.writeAudit(context.Background(), rows); err != nil {
					b.Fatal(err)
				}
			}
			for range prefill / perCommit {
				commit()
			}
			cpu := benchCPU()
			b.ResetTimer()
			for b.Loop() {
				commit()
			}
			b.StopTimer()
			used := benchCPU() - cpu
			b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(used.Nanoseconds())/float64(b.N*perCommit), "cpu-ns/row")
		})
	}
}

// openBenchStore opens an SQLite store in a temporary directory, closed
// when b ends.
func openBenchStore(b *testing.B) *Store {
	s, err := Open(context.Background(), Config{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// benchRow is the audit row of the n-th renewal of the benchmarks' node.
func benchRow(serial string, n int) Issued {
	return Issued{Serial: serial, SPIFFEID: "spiffe://east.example/node/bench", CredentialKind: "svid",
		Caller: "spiffe://east.example/node/bench", ServerID: "bench", IssuedAt: time.UnixMilli(int64(n)), NotAfter: time.UnixMilli(int64(n) + 3600e3), RootKeyID: "00"}
}

func benchCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
