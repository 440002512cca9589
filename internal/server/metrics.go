package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the server's Prometheus metrics, on a registry of its own so
// that two servers in one process (tests) do not collide.
type metrics struct {
	registry     *prometheus.Registry
	issued       *prometheus.CounterVec
	issueSeconds *prometheus.HistogramVec
	storeSeconds *prometheus.HistogramVec
	caNotAfter   prometheus.GaugeFunc
	watchers     prometheus.Gauge
}

func newMetrics(caNotAfter func() float64) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_server_issuance_total",
			Help: "Signing requests, by credential kind (k8s-sat, join-token, x509-svid) and result (ok, unauthenticated, denied, invalid, error).",
		}, []string{"credential", "result"}),
		issueSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshfed_server_issuance_duration_seconds",
			Help:    "Time to verify a credential and sign, by credential kind and result.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"credential", "result"}),
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshfed_server_store_duration_seconds",
			Help:    "Store call latency by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"op"}),
		caNotAfter: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshfed_server_ca_expiry_timestamp_seconds",
			Help: "When the signing CA's path first expires (Unix seconds); alert well before it.",
		}, caNotAfter),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshfed_server_watch_streams",
			Help: "Agents connected to the Watch stream.",
		}),
	}
	m.registry.MustRegister(m.issued, m.issueSeconds, m.storeSeconds, m.caNotAfter, m.watchers,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeIssue(kind, result string, start time.Time) {
	m.issued.WithLabelValues(kind, result).Inc()
	m.issueSeconds.WithLabelValues(kind, result).Observe(time.Since(start).Seconds())
}

func (m *metrics) observeStore(op string, start time.Time) {
	m.storeSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
}
