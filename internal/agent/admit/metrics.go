package admit

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/status"
)

// metrics are a Gate's Prometheus metrics; Collectors registers them.
type metrics struct {
	calls     *prometheus.CounterVec
	inflights *prometheus.GaugeVec
	refused   *prometheus.CounterVec
	conns     prometheus.GaugeFunc
	byMethod  sync.Map // full method name → *methodMetrics
}

func newMetrics(g *Gate) *metrics {
	m := &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_agent_calls_total",
			Help: "Workload API and SDS calls (unary calls and streams) that ended, by method and gRPC status code.",
		}, []string{"method", "code"}),
		inflights: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshfed_agent_calls_in_flight",
			Help: "Workload API and SDS calls in flight by method: the open streams (the connected workloads and Envoys) and the unary calls not yet answered.",
		}, []string{"method"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshfed_agent_workload_refused_total",
			Help: "Workload connections and calls refused for a limit (limits.* in the agent's configuration), by what (connection, call) and limit.",
		}, []string{"what", "limit"}),
		conns: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshfed_agent_workload_connections",
			Help: "Connections held open by workloads to the Workload API and SDS sockets.",
		}, func() float64 { c, _, _, _ := g.Usage(0); return float64(c) }),
	}
	return m
}

// Collectors are the gate's metrics, to register with the agent's.
func (g *Gate) Collectors() []prometheus.Collector {
	return []prometheus.Collector{g.m.calls, g.m.inflights, g.m.refused, g.m.conns}
}

// methodMetrics are one method's series, looked up once each.
type methodMetrics struct {
	label    string
	calls    *prometheus.CounterVec
	inflight prometheus.Gauge
	byCode   [17]atomic.Pointer[prometheus.Counter] // by codes.Code, made at first use
}

// method returns the series of a method (a gRPC full method name).
func (m *metrics) method(full string) *methodMetrics {
	if v, ok := m.byMethod.Load(full); ok {
		return v.(*methodMetrics)
	}
	label := methodLabel(full)
	mm := &methodMetrics{label: label, calls: m.calls, inflight: m.inflights.WithLabelValues(label)}
	v, _ := m.byMethod.LoadOrStore(full, mm)
	return v.(*methodMetrics)
}

// done counts a call that ended with err.
func (mm *methodMetrics) done(err error) {
	code := status.Code(err)
	if int(code) >= len(mm.byCode) {
		mm.calls.WithLabelValues(mm.label, code.String()).Inc()
		return
	}
	c := mm.byCode[code].Load()
	if c == nil {
		counter := mm.calls.WithLabelValues(mm.label, code.String())
		c = &counter
		mm.byCode[code].Store(c)
	}
	(*c).Inc()
}
