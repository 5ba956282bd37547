package kv_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tartan-net/tartan/kv"
)

// A witness times a value from the first time it saw it, whatever the
// value says; a new value restarts the time; forgotten keys start afresh.
func TestWitness(t *testing.T) {
	w := kv.NewWitness()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := w.Saw("k", "a", t0); !got.Equal(t0) {
		t.Fatalf("first sight: %v", got)
	}
	if got := w.Saw("k", "a", t0.Add(time.Hour)); !got.Equal(t0) {
		t.Fatalf("same value an hour on: %v, want the first sight", got)
	}
	if got := w.Saw("k", "b", t0.Add(2*time.Hour)); !got.Equal(t0.Add(2 * time.Hour)) {
		t.Fatalf("a new value: %v", got)
	}
	w.Saw("other/x", "a", t0)
	w.Forget("k", func(string) bool { return false })
	if got := w.Saw("k", "b", t0.Add(3*time.Hour)); !got.Equal(t0.Add(3 * time.Hour)) {
		t.Fatalf("after Forget: %v", got)
	}
	if got := w.Saw("other/x", "a", t0.Add(3*time.Hour)); !got.Equal(t0) {
		t.Fatalf("Forget of another prefix took other/x: %v", got)
	}
}

// Liveness never reads the times hosts wrote: a collector three days
// ahead, or a host three days behind, sees a renewing host alive and a
// silent one gone only once a lease lifetime of its own clock passed.
func TestLivenessIgnoresWrittenTimes(t *testing.T) {
	w := kv.NewWitness()
	ttl := time.Hour
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	hosts := map[string]kv.Host{
		"behind": {ID: "behind", Renewed: now.Add(-72 * time.Hour)},
		"ahead":  {ID: "ahead", Renewed: now.Add(72 * time.Hour)},
		"silent": {ID: "silent", Renewed: now},
	}
	renewals := map[string]time.Time{"behind": now.Add(-72 * time.Hour), "ahead": now.Add(72 * time.Hour), "silent": now}
	for step := 0; step < 4; step++ {
		at := now.Add(time.Duration(step) * 30 * time.Minute)
		l := kv.Liveness{Hosts: hosts, Now: at, TTL: ttl}
		l.Observe(w, renewals)
		if !l.HostAlive("behind") || !l.HostAlive("ahead") {
			t.Fatalf("step %d: a renewing host taken for gone: %+v", step, l.Seen)
		}
		if want := at.Sub(now) < ttl; l.HostAlive("silent") != want {
			t.Fatalf("step %d (%s after the first sight): silent host alive %v, want %v", step, at.Sub(now), !want, want)
		}
		renewals["behind"] = renewals["behind"].Add(30 * time.Minute)
		renewals["ahead"] = renewals["ahead"].Add(30 * time.Minute)
	}
}

// The block that holds an address is found whatever the blocks' sizes, the
// sizes tried in order.
func TestBlockHolding(t *testing.T) {
	blocks := map[netip.Prefix]string{
		netip.MustParsePrefix("10.0.0.0/26"):  "a",
		netip.MustParsePrefix("10.0.1.0/24"):  "b",
		netip.MustParsePrefix("10.0.1.64/26"): "c",
	}
	for _, c := range []struct {
		ip    string
		sizes []int
		want  string
	}{
		{"10.0.0.5", []int{26, 24}, "a"},
		{"10.0.1.5", []int{26, 24}, "b"},
		{"10.0.1.70", []int{26, 24}, "c"},
		{"10.0.1.70", []int{24, 26}, "b"},
		{"10.0.2.1", []int{26, 24}, ""},
		{"10.0.0.5", nil, ""},
	} {
		got, ok := kv.BlockHolding(blocks, c.sizes, netip.MustParseAddr(c.ip))
		if got != c.want || ok != (c.want != "") {
			t.Errorf("BlockHolding(%s, %v) = %q, %v; want %q", c.ip, c.sizes, got, ok, c.want)
		}
	}
}
