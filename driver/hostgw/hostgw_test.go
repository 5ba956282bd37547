package hostgw

import (
	"slices"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/backend/backendtest"
	"github.com/tartan-net/tartan/driver/routed"
)

// TestPeers: host-gw routes each remote block on the underlay through its
// host, with no device and no neighbour or FDB entries; a host off the
// underlay's segment gets no route and a problem that says what to use.
func TestPeers(t *testing.T) {
	n := backendtest.Network(Name)
	n.VNI, n.Device = 0, ""
	plan, ok := backendtest.Plan(New(backend.Host{ID: "self"}, "macvlan"), n)
	if want := []string{"10.244.0.64/26 via 192.0.2.11 dev eth0"}; !ok || !slices.Equal(backendtest.Routes(plan), want) {
		t.Fatalf("routes %q, want %q", backendtest.Routes(plan), want)
	}
	if len(plan.Neighs) != 0 || len(plan.FDBs) != 0 || len(plan.Problems) != 1 || !strings.Contains(plan.Problems[0], "tartan.directrouting=true") {
		t.Fatalf("entries %+v %+v, problems %q", plan.Neighs, plan.FDBs, plan.Problems)
	}
	if opts := New(backend.Host{}, "macvlan").Describe().Options; len(opts) != 1 || opts[0].Key != routed.OptAnnounce {
		t.Fatalf("host-gw's options of its own: %+v, want -o %s alone", opts, routed.OptAnnounce)
	}
}
