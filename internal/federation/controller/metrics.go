package controller

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The controller's metrics are read from its state when scraped, so they
// are never out of step with `meshfed federation status`.
var (
	metricGeneration = prometheus.NewDesc("meshfed_federation_generation",
		"The generation of the federation state members are sent; bumped on every change.", nil, nil)
	metricPhase = prometheus.NewDesc("meshfed_federation_rotation_phase",
		"1 for the phase the shared root's rotation is in (stable, publishing, reissuing, retiring).", []string{"phase"}, nil)
	metricRootExpiry = prometheus.NewDesc("meshfed_federation_root_expiry_timestamp_seconds",
		"When each shared root expires (Unix seconds), by subject key ID and state (active, published, retiring); alert well before the active one does.", []string{"subject_key_id", "state"}, nil)
	metricJoined = prometheus.NewDesc("meshfed_federation_member_joined",
		"1 for each member of spec.meshes that has joined, 0 for one that has not.", []string{"trust_domain"}, nil)
	metricLastContact = prometheus.NewDesc("meshfed_federation_member_last_contact_timestamp_seconds",
		"When a joined member last called the controller (Unix seconds).", []string{"trust_domain"}, nil)
	metricApplied = prometheus.NewDesc("meshfed_federation_member_applied_generation",
		"The generation a joined member last reported it applied; behind meshfed_federation_generation while it catches up.", []string{"trust_domain"}, nil)
	metricIntermediateExpiry = prometheus.NewDesc("meshfed_federation_member_intermediate_expiry_timestamp_seconds",
		"When a joined member's current intermediate expires (Unix seconds); members renew at half its life.", []string{"trust_domain"}, nil)
	metricConfigRefused = prometheus.NewDesc("meshfed_federation_config_refused",
		"1 while the VirtualMesh file on disk is refused (the one read before stays in use); see meshfed federation status.", nil, nil)
)

type collector struct{ c *Controller }

func (k collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{metricGeneration, metricPhase, metricRootExpiry, metricJoined, metricLastContact,
		metricApplied, metricIntermediateExpiry, metricConfigRefused} {
		ch <- d
	}
}

func (k collector) Collect(ch chan<- prometheus.Metric) {
	c := k.c
	c.mu.Lock()
	st := c.status()
	c.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(metricGeneration, float64(st.GetGeneration()))
	for _, p := range []Phase{PhaseStable, PhasePublishing, PhaseReissuing, PhaseRetiring} {
		v := 0.0
		if string(p) == st.GetRotationPhase() {
			v = 1
		}
		gauge(metricPhase, v, string(p))
	}
	for _, r := range st.GetRoots() {
		gauge(metricRootExpiry, float64(r.GetExpiresAt()), r.GetSubjectKeyId(), r.GetState())
	}
	for _, m := range st.GetMembers() {
		td := m.GetTrustDomain()
		if !m.GetJoined() {
			gauge(metricJoined, 0, td)
			continue
		}
		gauge(metricJoined, 1, td)
		gauge(metricLastContact, float64(m.GetLastContact()), td)
		gauge(metricApplied, float64(m.GetAppliedGeneration()), td)
		gauge(metricIntermediateExpiry, float64(m.GetIntermediateExpiresAt()), td)
	}
	refused := 0.0
	if st.GetConfigError() != "" {
		refused = 1
	}
	gauge(metricConfigRefused, refused)
}

// Handler serves /metrics (Prometheus: the metrics above and the Go
// runtime's) and /healthz, for --metrics-listen.
func (c *Controller) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{c}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	return mux
}
