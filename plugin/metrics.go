package plugin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/internal/dockerid"
	"github.com/tartan-net/tartan/kv"
)

// Metrics are tartan's Prometheus metrics, served on METRICS. Each plugin
// process has its own registry.
type Metrics struct {
	reg            *prometheus.Registry
	requests       *prometheus.CounterVec
	requestSeconds *prometheus.HistogramVec
	storeCalls     *prometheus.CounterVec
	storeSeconds   *prometheus.HistogramVec
	resyncSeconds  prometheus.Histogram
	resyncs        *prometheus.CounterVec
	renewals       *prometheus.CounterVec
}

// NewMetrics makes the registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tartan_requests_total",
			Help: "libnetwork requests served, by call and HTTP status."}, []string{"call", "code"}),
		requestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tartan_request_seconds",
			Help: "Time to serve a libnetwork request, by call.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}, []string{"call"}),
		storeCalls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tartan_store_requests_total",
			Help: "Calls to the cluster store, by operation and result (ok, not_found, conflict, unavailable, denied, error)."}, []string{"op", "result"}),
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tartan_store_request_seconds",
			Help: "Time of a call to the cluster store, by operation (watches not included).", Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16)}, []string{"op"}),
		resyncSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tartan_resync_seconds",
			Help: "Time of a full resync (RESYNC): networks, endpoints, peer entries and firewall repaired.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 16)}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tartan_resyncs_total",
			Help: "Full resyncs, by result (ok, error)."}, []string{"result"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tartan_lease_renewals_total",
			Help: "Host registrations and block lease renewals, by result (ok, error)."}, []string{"result"}),
	}
	m.reg.MustRegister(m.requests, m.requestSeconds, m.storeCalls, m.storeSeconds, m.resyncSeconds, m.resyncs, m.renewals,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Networks adds the driver's networks, read at each scrape.
func (m *Metrics) Networks(drv *driver.Driver) {
	m.reg.MustRegister(newNetworkCollector(drv))
}

// Request records one libnetwork request.
func (m *Metrics) Request(call string, code int, took time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(call, strconv.Itoa(code)).Inc()
	m.requestSeconds.WithLabelValues(call).Observe(took.Seconds())
}

// Store is a kv.Observer.
func (m *Metrics) Store(op string, took time.Duration, err error) {
	m.storeCalls.WithLabelValues(op, storeResult(err)).Inc()
	if op != "watch" {
		m.storeSeconds.WithLabelValues(op).Observe(took.Seconds())
	}
}

// Resync records one full resync.
func (m *Metrics) Resync(took time.Duration, err error) {
	if m == nil {
		return
	}
	m.resyncSeconds.Observe(took.Seconds())
	m.resyncs.WithLabelValues(result(err)).Inc()
}

// Renewal records one registration and lease renewal.
func (m *Metrics) Renewal(err error) {
	if m == nil {
		return
	}
	m.renewals.WithLabelValues(result(err)).Inc()
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

func storeResult(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, kv.ErrNotFound):
		return "not_found"
	case errors.Is(err, kv.ErrConflict):
		return "conflict"
	case errors.Is(err, kv.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return "unavailable"
	case errors.Is(err, kv.ErrDenied):
		return "denied"
	}
	return "error"
}

// Serve serves /metrics on addr until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// networkCollector reports this host's networks as the driver has them at
// the time of the scrape.
type networkCollector struct {
	drv                                 *driver.Driver
	endpoints, routes, neighbors, probs *prometheus.Desc
	fastpath                            *prometheus.Desc
}

func newNetworkCollector(drv *driver.Driver) networkCollector {
	labels := []string{"network", "backend", "pool"}
	return networkCollector{drv: drv,
		endpoints: prometheus.NewDesc("tartan_network_endpoints", "Endpoints of a network on this host.", labels, nil),
		routes:    prometheus.NewDesc("tartan_network_peer_routes", "Peer routes in a network's current plan.", labels, nil),
		neighbors: prometheus.NewDesc("tartan_network_peer_neighbors", "VXLAN peer neighbour entries in a network's current plan.", labels, nil),
		probs:     prometheus.NewDesc("tartan_network_peer_problems", "Peers a network's plan cannot reach.", labels, nil),
		fastpath: prometheus.NewDesc("tartan_fastpath_packets_total", "Packets the eBPF fast path carried (path local, out, in) or left to the kernel path (stack_port, stack_neigh, stack_mtu, stack_other); absent when the fast path is off.",
			[]string{"path"}, nil),
	}
}

func (c networkCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.endpoints, c.routes, c.neighbors, c.probs, c.fastpath} {
		ch <- d
	}
}

func (c networkCollector) Collect(ch chan<- prometheus.Metric) {
	for _, n := range c.drv.Status() {
		labels := []string{dockerid.Short(n.ID), n.Backend, n.Pool}
		ch <- prometheus.MustNewConstMetric(c.endpoints, prometheus.GaugeValue, float64(n.Endpoints), labels...)
		ch <- prometheus.MustNewConstMetric(c.routes, prometheus.GaugeValue, float64(n.Routes), labels...)
		ch <- prometheus.MustNewConstMetric(c.neighbors, prometheus.GaugeValue, float64(n.Neighbors), labels...)
		ch <- prometheus.MustNewConstMetric(c.probs, prometheus.GaugeValue, float64(len(n.Problems)), labels...)
	}
	if on, _, packets, err := c.drv.FastPath(); on && err == nil {
		for path, v := range packets {
			ch <- prometheus.MustNewConstMetric(c.fastpath, prometheus.CounterValue, float64(v), path)
		}
	}
}
