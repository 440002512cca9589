package admit

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/agent/attest"
)

func newGate(t *testing.T, lim Limits, log *bytes.Buffer, clock func() time.Time) *Gate {
	t.Helper()
	cfg := Config{Limits: lim, Clock: clock, FileLimit: 1 << 20}
	if log != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(log, nil))
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestDefaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lim    Limits
		nofile uint64
		want   Limits
	}{
		{"defaults", Limits{}, 1 << 20, Limits{DefaultConns, DefaultConnsPerUID, DefaultCalls, DefaultCallsPerUID}},
		// A quarter of the descriptors: half of them, two per connection.
		{"few descriptors", Limits{}, 1024, Limits{256, 256, DefaultCalls, DefaultCallsPerUID}},
		{"set", Limits{Conns: 10, ConnsPerUID: 3, Calls: 20, CallsPerUID: 5}, 64, Limits{10, 3, 20, 5}},
		{"per uid above the total", Limits{Conns: 10, ConnsPerUID: 30, Calls: 20, CallsPerUID: 50}, 1 << 20, Limits{10, 10, 20, 20}},
		{"no bounds", Limits{-1, -1, -1, -1}, 1 << 20, Limits{-1, -1, -1, -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := New(Config{Limits: tc.lim, FileLimit: tc.nofile})
			if err != nil {
				t.Fatal(err)
			}
			if got := g.Limits(); got != tc.want {
				t.Fatalf("limits = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestConnLimits(t *testing.T) {
	g := newGate(t, Limits{Conns: 3, ConnsPerUID: 2}, nil, nil)
	alice, bob, carol := attest.Caller{PID: 10, UID: 1000}, attest.Caller{PID: 11, UID: 1001}, attest.Caller{PID: 12, UID: 1002}

	a1, err := g.Conn(alice)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Conn(alice); err != nil {
		t.Fatal(err)
	}
	_, err = g.Conn(alice)
	const perUID = "admit: uid 1000 holds as many connections to this agent as limits.max_connections_per_uid allows (2); a process of that user may be leaking them (close streams and connections when done)"
	if err == nil || err.Error() != perUID {
		t.Fatalf("third connection of uid 1000: %v, want %q", err, perUID)
	}
	if _, err := g.Conn(bob); err != nil {
		t.Fatalf("bob's first connection: %v", err)
	}
	_, err = g.Conn(carol)
	const total = "admit: the agent holds as many workload connections as limits.max_connections allows (3); refusing a new one from uid 1002 (pid 12)"
	if err == nil || err.Error() != total {
		t.Fatalf("carol's connection: %v, want %q", err, total)
	}

	// Released once, however often release is called.
	a1()
	a1()
	if conns, _, aliceConns, _ := g.Usage(alice.UID); conns != 2 || aliceConns != 1 {
		t.Fatalf("after one release: %d connections, %d of alice; want 2 and 1", conns, aliceConns)
	}
	if _, err := g.Conn(carol); err != nil {
		t.Fatalf("carol after a release: %v", err)
	}
	if _, err := g.Conn(alice); err == nil {
		t.Fatal("alice got a connection past the total")
	}
}

func TestCallLimits(t *testing.T) {
	g := newGate(t, Limits{Calls: 3, CallsPerUID: 2}, nil, nil)
	alice, bob := attest.Caller{PID: 10, UID: 1000}, attest.Caller{PID: 11, UID: 1001}
	var held []*usage
	for range 2 {
		u, err := g.take(alice, call)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, u)
	}
	const perUID = "admit: uid 1000 holds as many calls to this agent as limits.max_calls_per_uid allows (2); a process of that user may be leaking them (close streams and connections when done)"
	if _, err := g.take(alice, call); err == nil || err.Error() != perUID {
		t.Fatalf("third call: %v, want %q", err, perUID)
	}
	if _, err := g.take(bob, call); err != nil {
		t.Fatal(err)
	}
	if _, err := g.take(bob, call); err == nil || !strings.Contains(err.Error(), "as limits.max_calls allows (3)") {
		t.Fatalf("a call past the total: %v", err)
	}
	for _, u := range held {
		g.give(alice.UID, u, call)
	}
	if _, calls, _, aliceCalls := g.Usage(alice.UID); calls != 1 || aliceCalls != 0 {
		t.Fatalf("after alice's releases: %d calls, %d of alice; want 1 and 0", calls, aliceCalls)
	}
	g.mu.Lock()
	_, kept := g.byUID[alice.UID]
	g.mu.Unlock()
	if kept {
		t.Fatal("a uid holding nothing is still recorded")
	}
}

func TestRefusalsLoggedAtMostEveryLogEvery(t *testing.T) {
	var log bytes.Buffer
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	g := newGate(t, Limits{ConnsPerUID: 1}, &log, func() time.Time { return now })
	alice := attest.Caller{PID: 10, UID: 1000}
	if _, err := g.Conn(alice); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := g.Conn(alice); err == nil {
			t.Fatal("admitted past the limit")
		}
	}
	if n := strings.Count(log.String(), "refused a workload connection"); n != 1 {
		t.Fatalf("%d lines for 3 refusals within LogEvery, want 1:\n%s", n, log.String())
	}
	now = now.Add(LogEvery)
	if _, err := g.Conn(alice); err == nil {
		t.Fatal("admitted past the limit")
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "refused_since_last_line=2") || !strings.Contains(lines[1], "limit=limits.max_connections_per_uid") || !strings.Contains(lines[1], "uid=1000") {
		t.Fatalf("log after LogEvery:\n%s", log.String())
	}
}
