package agent

import (
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the agent's Prometheus metrics, on its own registry.
type metrics struct {
	registry *prometheus.Registry
	renewals *prometheus.CounterVec
}

func newMetrics(a *Agent) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_agent_renewals_total",
			Help: "SVID signings asked of the server, by kind (node, workload) and result (ok, error).",
		}, []string{"kind", "result"}),
	}
	held := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meshfed_agent_svids",
		Help: "Workload X.509-SVIDs held that have not expired.",
	}, func() float64 { n, _ := a.Cache.stats(a.clock()); return float64(n) })
	expiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meshfed_agent_svid_expiry_seconds",
		Help: "Seconds until the first held workload SVID expires (0 when none is held).",
	}, func() float64 {
		_, first := a.Cache.stats(a.clock())
		if first.IsZero() {
			return 0
		}
		return first.Sub(a.clock()).Seconds()
	})
	nodeExpiry := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meshfed_agent_node_svid_expiry_seconds",
		Help: "Seconds until the node SVID expires.",
	}, func() float64 {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.node == nil {
			return 0
		}
		return a.node.Certificates[0].NotAfter.Sub(a.clock()).Seconds()
	})
	refused := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meshfed_agent_node_refused",
		Help: "1 while the server refuses this node (evicted, banned, or its node SVID superseded: see the agent's log for the reason) and the agent has not attested again; it renews nothing meanwhile.",
	}, func() float64 {
		if a.Refused() != "" {
			return 1
		}
		return 0
	})
	m.registry.MustRegister(m.renewals, held, expiry, nodeExpiry, refused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// RegisterMetrics adds collectors of the agent's other parts (its
// workload sockets' admission gate) to the metrics it serves.
func (a *Agent) RegisterMetrics(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := a.metrics.registry.Register(c); err != nil {
			return fmt.Errorf("agent: metrics: %w", err)
		}
	}
	return nil
}

func (m *metrics) renewal(kind string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.renewals.WithLabelValues(kind, result).Inc()
}

// Handler serves /metrics, /healthz (the process is up) and /readyz (the
// node SVID is valid and the trust domain's bundle is known).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

func (a *Agent) ready() error {
	a.mu.Lock()
	node := a.node
	a.mu.Unlock()
	now := a.clock()
	switch {
	case node == nil:
		return fmt.Errorf("not attested")
	case now.After(node.Certificates[0].NotAfter):
		return fmt.Errorf("node SVID expired at %s", node.Certificates[0].NotAfter.UTC().Format(time.RFC3339))
	}
	if local, _ := a.Cache.Bundles(); local == nil || len(local.X509Authorities()) == 0 {
		return fmt.Errorf("no trust bundle yet")
	}
	return nil
}

// stats counts the unexpired workload SVIDs and finds the first expiry.
func (c *Cache) stats(now time.Time) (int, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int
	var first time.Time
	for _, st := range c.entries {
		if st.svid == nil || now.After(st.svid.Certificates[0].NotAfter) {
			continue
		}
		n++
		if na := st.svid.Certificates[0].NotAfter; first.IsZero() || na.Before(first) {
			first = na
		}
	}
	return n, first
}
