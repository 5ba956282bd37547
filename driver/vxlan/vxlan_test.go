package vxlan

import (
	"slices"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/backend/backendtest"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routed"
)

// TestPeers: every remote host's block goes through the network's VXLAN
// device, with one neighbour and one FDB entry per host (flannel's three
// entries); with directrouting, a host on the underlay's segment is routed
// on the underlay instead and needs no entries.
func TestPeers(t *testing.T) {
	b := New(backend.Host{ID: "self"}, "macvlan")
	n := backendtest.Network(Name)
	plan, ok := backendtest.Plan(b, n)
	want := []string{"10.244.0.64/26 via 192.0.2.11 dev tartan.7 onlink", "10.244.0.128/26 via 198.51.100.12 dev tartan.7 onlink"}
	if !ok || !slices.Equal(backendtest.Routes(plan), want) {
		t.Fatalf("routes %q, want %q", backendtest.Routes(plan), want)
	}
	if len(plan.Neighs) != 2 || len(plan.FDBs) != 2 || plan.Neighs[0].MAC != kernel.VTEPMAC("near", 7).String() || plan.FDBs[0].Link != "tartan.7" {
		t.Fatalf("neighbours %+v, FDB %+v", plan.Neighs, plan.FDBs)
	}
	n.Direct = true
	plan, _ = backendtest.Plan(b, n)
	want = []string{"10.244.0.64/26 via 192.0.2.11 dev eth0", "10.244.0.128/26 via 198.51.100.12 dev tartan.7 onlink"}
	if !slices.Equal(backendtest.Routes(plan), want) || len(plan.Neighs) != 1 || plan.Neighs[0].IP.String() != "198.51.100.12" {
		t.Fatalf("directrouting: routes %q, neighbours %+v", backendtest.Routes(plan), plan.Neighs)
	}
}

// TestCreateAndOptions: the MTU leaves room for the encapsulation, the
// device is named after the VNI, and the options are vxlan's own.
func TestCreateAndOptions(t *testing.T) {
	b := New(backend.Host{ID: "self", Underlay: func() (kernel.Underlay, error) { return backendtest.Underlay, nil }}, "macvlan")
	n := backend.Network{ID: "net1", Pool: "10.244.0.0/16", Backend: Name, VNI: 42}
	if err := b.Create(t.Context(), &n, backend.CreateRequest{}); err != nil {
		t.Fatal(err)
	}
	if n.MTU != 1500-Overhead || n.Device != "tartan.42" || n.Gateway != "169.254.1.1" {
		t.Fatalf("created %+v", n)
	}
	if err := b.Create(t.Context(), &n, backend.CreateRequest{Options: backend.Options{MTU: 1480}}); err == nil || !strings.Contains(err.Error(), "use 1450 or less") {
		t.Fatalf("an MTU the encapsulation cannot carry: %v", err)
	}
	var o backend.Options
	for _, opt := range b.Describe().Options {
		if err := opt.Parse(&o, map[string]string{OptVNI: "5", OptDirectRouting: "true", routed.OptAnnounce: "true"}[opt.Key]); err != nil {
			t.Fatal(err)
		}
	}
	if o.VNI != 5 || !o.DirectRouting || !o.Announce || !b.Describe().ClaimsVNI {
		t.Fatalf("options %+v", o)
	}
	n.Announce = true
	if p, _ := b.Peers(n); !p.Announce {
		t.Fatal("-o tartan.bgp=true: the network's part of the pool is not announced")
	}
	if p, _ := b.Firewall(n); !p.Announced || p.Fabric {
		t.Fatalf("-o tartan.bgp=true: firewall %+v, want the pool announced, its guard whole (tartan routes the peers)", p)
	}
	if info := b.Info(n, backend.Endpoint{HostIf: "tnx"}); info["tartan.vni"] != "42" || info["tartan.interface"] != "tnx" {
		t.Fatalf("info %v", info)
	}
}
