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
	first     *prometheus.HistogramVec
	byMethod  sync.Map // full method name → *methodMetrics
}

// firstResponseBuckets are the bounds of
// meshfed_agent_call_first_response_seconds: fine below a millisecond,
// where a call answered from memory ends, and up to half a minute for a
// stream whose first message waits on its client (an SDS stream answers
// Envoy's first request, however late it comes).
var firstResponseBuckets = []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, .5, 1, 5, 30}

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
		first: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshfed_agent_call_first_response_seconds",
			Help:    "Time the agent took from an admitted Workload API or SDS call's arrival to its first response, by method: a unary call's return (an answer or an error), a stream's first message handed to gRPC to send. A stream that ends before sending anything is not counted; an SDS stream's first message answers the client's first request, so its time includes the client's.",
			Buckets: firstResponseBuckets,
		}, []string{"method"}),
	}
	return m
}

// Collectors are the gate's metrics, to register with the agent's.
func (g *Gate) Collectors() []prometheus.Collector {
	return []prometheus.Collector{g.m.calls, g.m.inflights, g.m.refused, g.m.conns, g.m.first}
}

// methodMetrics are one method's series, looked up once each.
type methodMetrics struct {
	label    string
	calls    *prometheus.CounterVec
	inflight prometheus.Gauge
	first    prometheus.Observer
	byCode   [17]atomic.Pointer[prometheus.Counter] // by codes.Code, made at first use
}

// method returns the series of a method (a gRPC full method name).
func (m *metrics) method(full string) *methodMetrics {
	if v, ok := m.byMethod.Load(full); ok {
		return v.(*methodMetrics)
	}
	label := methodLabel(full)
	mm := &methodMetrics{label: label, calls: m.calls, inflight: m.inflights.WithLabelValues(label), first: m.first.WithLabelValues(label)}
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
