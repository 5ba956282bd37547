package bgp

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/backend/backendtest"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routed"
)

// bgp routes no peer in the kernel (the fabric does), announces this
// host's own block, and opens the pool to the fabric with guard routes for
// its own blocks only.
func TestPeersAndFirewall(t *testing.T) {
	b := New(backend.Host{ID: "self"}, "macvlan", "")
	n := backendtest.Network(Name)
	n.VNI, n.Device = 0, ""
	plan, ok := backendtest.Plan(b, n)
	if !ok || len(plan.Routes) != 0 || len(plan.Neighs) != 0 || len(plan.Problems) != 0 || fmt.Sprint(plan.Announce) != "[10.244.0.0/26]" {
		t.Fatalf("plan %+v: want no entry, no problem, this host's block announced", plan)
	}
	p, ok := b.Firewall(n)
	if !ok || !p.Announced || !p.Fabric || !p.Underlay {
		t.Fatalf("firewall %+v", p)
	}
}

// Create refuses what the host cannot do, naming the fix.
func TestCreateRefuses(t *testing.T) {
	for _, c := range []struct {
		off  string
		n    backend.Network
		raw  map[string]string
		want string
	}{
		{"BGP is off on this host: set BGP_AS", backend.Network{Pool: "10.244.0.0/16"}, nil, "-o tartan.backend=bgp: BGP is off"},
		{"", backend.Network{Pool: "10.244.0.0/16", Pool6: "fd00::/64"}, nil, "--ipv6 on a bgp network: this host's underlay eth0 has no global IPv6 address"},
		{"", backend.Network{Pool: "10.244.0.0/16"}, map[string]string{routed.OptAnnounce: "false"}, "always announced"},
	} {
		b := New(backend.Host{ID: "self", Underlay: func() (kernel.Underlay, error) { return backendtest.Underlay, nil }}, "macvlan", c.off)
		n := c.n
		err := b.Create(t.Context(), &n, backend.CreateRequest{Options: backend.Options{Raw: c.raw}})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v %v: error %v, want one that says %q", c.n, c.raw, err, c.want)
		}
	}
}
