package server

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meshfed/meshfed/internal/pemfile"
	"github.com/meshfed/meshfed/internal/testsync"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	istioca "istio.io/api/security/v1alpha1"
)

func TestLimitsDefaults(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want limitSettings
	}{
		{"", limitSettings{DefaultMaxSigningInFlight, DefaultMaxSigningQueue, DefaultMaxQueueWait, DefaultMaxStreamsPerConnection}},
		{"limits:\n  max_signing_in_flight: 8\n  max_signing_queue: -1\n  max_queue_wait: off\n  max_streams_per_connection: -1\n", limitSettings{8, -1, 0, 0}},
		{"limits:\n  max_queue_wait: 30s\n  max_streams_per_connection: 16\n", limitSettings{DefaultMaxSigningInFlight, DefaultMaxSigningQueue, 30 * time.Second, 16}},
	} {
		if set := validated(t, tc.yaml); set.limits != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.yaml, set.limits, tc.want)
		}
	}
}

// TestSigningShed: past limits.max_signing_in_flight a signing request
// waits its turn; past limits.max_signing_queue it is refused at once with
// UNAVAILABLE; calls that sign nothing are never held back.
func TestSigningShed(t *testing.T) {
	logs := &testsync.Buffer{}
	h := startWith(t, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}, func(c *Config) {
		c.Limits = LimitsConfig{MaxSigningInFlight: 1, MaxSigningQueue: 1}
	})
	client := istioca.NewIstioCertificateServiceClient(h.dial(t, nil))
	_, csrDER := newCSR(t, "spiffe://east.example/ns/default/sa/reviews")
	token := h.jwt(t, saClaims("default", "reviews", "istio-ca", time.Now().Add(time.Hour)))
	sign := func() error {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
		_, err := client.CreateCertificate(ctx, &istioca.IstioCertificateRequest{Csr: string(pemfile.EncodeCSR(csrDER))})
		return err
	}
	if err := sign(); err != nil {
		t.Fatal(err)
	}

	// The one turn is taken (as by a long signing), so the next request
	// waits, and the one after it is refused.
	release, err := h.srv.shed.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- sign() }()
	testsync.Eventually(t, "the second request to wait for a turn", func() bool { return h.srv.shed.Queued() == 1 })
	want := "server: overloaded: as many signing requests wait for a turn as limits.max_signing_queue allows (1); retry with backoff"
	wantStatus(t, sign(), codes.Unavailable, want)
	wantStatus(t, sign(), codes.Unavailable, want)
	// One log line for the two refusals (shedLogEvery).
	if n := strings.Count(logs.String(), "shedding load"); n != 1 || !strings.Contains(logs.String(), "reason=queue_full limit=limits.max_signing_queue in_flight=1 queued=1") {
		t.Errorf("%d lines about shedding for two refusals, want 1 naming the limit:\n%s", n, logs.String())
	}
	// A call that signs nothing is not held back.
	if _, err := h.admin(t).ListEntries(t.Context(), nil); err != nil {
		t.Fatalf("an admin call while signing is saturated: %v", err)
	}
	release()
	if err := <-waited; err != nil {
		t.Fatalf("the waiting request, once its turn came: %v", err)
	}

	m := h.metricsText(t)
	for _, want := range []string{
		`meshfed_server_signing_shed_total{reason="queue_full"} 2` + "\n",
		"meshfed_server_signing_in_flight 0\n",
		"meshfed_server_signing_queued 0\n",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", strings.TrimSpace(want))
		}
	}
	if !strings.Contains(m, `meshfed_server_issuance_total{credential="k8s-sat",result="ok"} 2`+"\n") {
		t.Errorf("want the two admitted requests signed:\n%s", grep(m, "meshfed_server_issuance_total"))
	}
}

// grep returns the lines of s that contain sub.
func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
