package plugin

import (
	"context"
	"errors"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/tartan-net/tartan/kv"
)

// The metrics' names, and a store that cannot be reached showing in the
// store error counter.
func TestMetrics(t *testing.T) {
	m := NewMetrics()
	store := kv.Observed(kv.NewMemory(), m.Store)
	ctx := context.Background()
	if _, err := store.Put(ctx, "a", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	_, _ = store.Get(ctx, "missing")
	m.Store("txn", time.Millisecond, errors.Join(errors.New("consul at x"), kv.ErrUnavailable))
	m.Request("/NetworkDriver.CreateNetwork", http.StatusOK, 2*time.Millisecond)
	m.Request("/IpamDriver.RequestPool", http.StatusConflict, time.Millisecond)
	m.Resync(10*time.Millisecond, nil)
	m.Renewal(errors.New("down"))
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, f := range families {
		got[f.GetName()] = f
	}
	for _, name := range []string{"tartan_requests_total", "tartan_request_seconds", "tartan_store_requests_total", "tartan_store_request_seconds",
		"tartan_resync_seconds", "tartan_resyncs_total", "tartan_lease_renewals_total", "go_goroutines", "process_cpu_seconds_total"} {
		if got[name] == nil {
			t.Errorf("no metric %s", name)
		}
	}
	count := func(name string, labels ...string) float64 {
		for _, mt := range got[name].GetMetric() {
			var have []string
			for _, l := range mt.GetLabel() {
				have = append(have, l.GetName()+"="+l.GetValue())
			}
			if strings.Join(have, ",") == strings.Join(labels, ",") {
				return mt.GetCounter().GetValue()
			}
		}
		return 0
	}
	for _, c := range []struct {
		name   string
		labels []string
	}{
		{"tartan_store_requests_total", []string{"op=put", "result=ok"}},
		{"tartan_store_requests_total", []string{"op=get", "result=not_found"}},
		{"tartan_store_requests_total", []string{"op=txn", "result=unavailable"}},
		{"tartan_requests_total", []string{"call=/NetworkDriver.CreateNetwork", "code=200"}},
		{"tartan_requests_total", []string{"call=/IpamDriver.RequestPool", "code=409"}},
		{"tartan_lease_renewals_total", []string{"result=error"}},
	} {
		if v := count(c.name, c.labels...); v != 1 {
			t.Errorf("%s%v = %v, want 1", c.name, c.labels, v)
		}
	}
}

func TestMetricsSetting(t *testing.T) {
	for v, ok := range map[string]bool{"127.0.0.1:9323": true, ":9323": true, "[::1]:9323": true, "9323": false, "localhost:9323": false, "127.0.0.1:99999": false, "127.0.0.1:x": false} {
		s, err := ParseSettings(envOf(map[string]string{"METRICS": v}))
		if ok != (err == nil) || (ok && s.Metrics != v) {
			t.Errorf("METRICS=%s: %+v %v", v, s.Metrics, err)
		}
		if err != nil && !strings.Contains(err.Error(), "127.0.0.1:9323") {
			t.Errorf("METRICS=%s: the error does not show the fix: %v", v, err)
		}
	}
}

// Every tartan metric contrib/grafana-tartan.json plots is one the plugin
// exports.
func TestDashboardNamesExist(t *testing.T) {
	m := NewMetrics()
	descs := make(chan *prometheus.Desc, 64)
	for _, c := range []prometheus.Collector{m.requests, m.requestSeconds, m.storeCalls, m.storeSeconds, m.resyncSeconds, m.resyncs, m.renewals, newNetworkCollector(nil)} {
		c.Describe(descs)
	}
	close(descs)
	exported := map[string]bool{}
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range descs {
		if mm := fq.FindStringSubmatch(d.String()); mm != nil {
			exported[mm[1]] = true
		}
	}
	dash, err := os.ReadFile("../contrib/grafana-tartan.json")
	if err != nil {
		t.Fatal(err)
	}
	used := regexp.MustCompile(`tartan_[a-z_]+`).FindAllString(string(dash), -1)
	if len(used) < 5 {
		t.Fatalf("the dashboard plots %d tartan metrics", len(used))
	}
	for _, name := range used {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
		if !exported[base] {
			t.Errorf("the dashboard plots %s, which the plugin does not export (it exports %v)", name, exported)
		}
	}
}
