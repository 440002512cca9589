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
	// policyChanges counts ApplyPolicies and DeletePolicy calls.
	policyChanges *prometheus.CounterVec
	// commitRows and commitWait describe the audit log's group commit.
	commitRows prometheus.Histogram
	commitWait prometheus.Histogram
	// nodeRefusals counts node calls refused for the node's record, by
	// reason (nodeRefused).
	nodeRefusals *prometheus.CounterVec
	// auditPruned counts audit rows deleted by audit.retention.
	auditPruned prometheus.Counter
	// shed counts signing requests refused by limits.*, by reason.
	shed *prometheus.CounterVec
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
		policyChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_server_policy_changes_total",
			Help: "Policy apply and delete calls, by op (apply, delete) and result (ok, invalid, not_found, error).",
		}, []string{"op", "result"}),
		commitRows: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshfed_server_audit_commit_rows",
			Help:    "Audit rows (issued certificates) per commit of the audit log; see audit.commit_delay.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 8),
		}),
		commitWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshfed_server_audit_commit_wait_seconds",
			Help:    "How long a commit of the audit log waited for the rows of certificates being signed (at most audit.commit_delay).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 12),
		}),
		nodeRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_server_node_refusals_total",
			Help: "Agent calls refused for the node's record, by reason: NODE_NOT_ATTESTED (never attested or evicted), NODE_BANNED, NODE_SVID_SUPERSEDED (an SVID the node renewed away from: alert on it, a copy of a node SVID may be in use).",
		}, []string{"reason"}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_server_signing_shed_total",
			Help: "Signing requests refused with UNAVAILABLE for limits.*, by reason: queue_full (limits.max_signing_queue waited already), waited (no turn within limits.max_queue_wait).",
		}, []string{"reason"}),
		auditPruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshfed_server_audit_pruned_rows_total",
			Help: "Audit rows deleted because their certificate expired more than audit.retention ago.",
		}),
	}
	m.registry.MustRegister(m.issued, m.issueSeconds, m.storeSeconds, m.caNotAfter, m.watchers, m.policyChanges, m.commitRows, m.commitWait, m.nodeRefusals, m.auditPruned, m.shed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeIssue(kind, result string, start time.Time) {
	m.issued.WithLabelValues(kind, result).Inc()
	m.issueSeconds.WithLabelValues(kind, result).Observe(time.Since(start).Seconds())
}

func (m *metrics) observeAuditCommit(rows int, waited time.Duration) {
	m.commitRows.Observe(float64(rows))
	m.commitWait.Observe(waited.Seconds())
}

func (m *metrics) observeStore(op string, start time.Time) {
	m.storeSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// federationCollector reports, at each scrape, how federation stands: each
// federates_with peer's last good fetch and failures, the phase of this
// server's root rotation, and whether it signs under a VirtualMesh.
type federationCollector struct{ s *Server }

var (
	peerLastSuccess = prometheus.NewDesc("meshfed_server_federated_bundle_last_success_timestamp_seconds",
		"When the bundle of a federates_with peer was last fetched (Unix seconds; 0 for never).", []string{"trust_domain"}, nil)
	peerFailures = prometheus.NewDesc("meshfed_server_federated_bundle_failures",
		"Failed fetches of a federates_with peer's bundle since its last good one.", []string{"trust_domain"}, nil)
	peerExpiry = prometheus.NewDesc("meshfed_server_federated_bundle_expiry_timestamp_seconds",
		"When the first X.509 authority of a peer's last good bundle expires (Unix seconds).", []string{"trust_domain"}, nil)
	peerPush = prometheus.NewDesc("meshfed_server_federated_bundle_push",
		"1 while a peer pushes its bundle changes (a conditional long poll is held), else 0.", []string{"trust_domain"}, nil)
	rotationPhase = prometheus.NewDesc("meshfed_server_root_rotation_phase",
		"1 for the phase this server's own root rotation is in (stable, publishing, retiring).", []string{"phase"}, nil)
	virtualMeshJoined = prometheus.NewDesc("meshfed_server_virtual_mesh_joined",
		"1 when the server signs with an intermediate of its VirtualMesh's shared root.", nil, nil)
)

func (c federationCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{peerLastSuccess, peerFailures, peerExpiry, peerPush, rotationPhase, virtualMeshJoined} {
		ch <- d
	}
}

func (c federationCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	if s.fetcher != nil {
		for _, p := range s.fetcher.Status() {
			td := p.TrustDomain.Name()
			ch <- prometheus.MustNewConstMetric(peerLastSuccess, prometheus.GaugeValue, float64(unix(p.LastSuccess)), td)
			ch <- prometheus.MustNewConstMetric(peerFailures, prometheus.GaugeValue, float64(p.Failures), td)
			ch <- prometheus.MustNewConstMetric(peerExpiry, prometheus.GaugeValue, float64(unix(p.EarliestExpiry)), td)
			push := 0.0
			if p.Push {
				push = 1
			}
			ch <- prometheus.MustNewConstMetric(peerPush, prometheus.GaugeValue, push, td)
		}
	}
	current := s.rotationPhase()
	for _, phase := range []string{phaseStable, phasePublishing, phaseRetiring} {
		v := 0.0
		if phase == current {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(rotationPhase, prometheus.GaugeValue, v, phase)
	}
	if s.set.federation.vm != nil {
		joined := 0.0
		if s.auth.FromCACerts() {
			joined = 1
		}
		ch <- prometheus.MustNewConstMetric(virtualMeshJoined, prometheus.GaugeValue, joined)
	}
}
