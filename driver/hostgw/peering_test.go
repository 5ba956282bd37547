package hostgw

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/backend/backendtest"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/kv"
)

// host-gw routes every destination of a host on this host's segment on the
// underlay through the host's address, IPv6 ones through its link-local
// address; a host off the segment gets no route and one problem per
// destination that says what to use instead.
func TestPeering(t *testing.T) {
	net := routing.Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Peering: Peering{}}
	p := routing.Compute(backendtest.Segments(net))
	if got := strings.Join(backendtest.Routes(p), "|"); got != "10.244.0.5/32 via 10.98.0.12 dev eth1|10.244.0.64/26 via 10.98.0.12 dev eth1|10.244.0.128/26 via 10.98.0.12 dev eth1" {
		t.Fatalf("host-gw routes: %s", got)
	}
	if len(p.Neighs) != 0 || len(p.FDBs) != 0 || len(p.Tunnels) != 0 {
		t.Fatalf("host-gw has no neighbours, FDB entries or tunnels: %+v", p)
	}
	if len(p.Problems) != 2 || !strings.Contains(p.Problems[0], "host c (10.97.5.13) is not on this host's L2 segment 10.98.0.0/24") ||
		!strings.Contains(p.Problems[0], "tartan.directrouting=true") {
		t.Fatalf("host-gw must report the peer off the segment: %v", p.Problems)
	}

	// IPv6: through b's link-local address; a peer that registered none
	// gets no route and a problem.
	in := backendtest.Segments(net)
	in.Net.Pool6 = netip.MustParsePrefix("fd00:1::/64")
	live := in.Now.Add(time.Hour)
	in.View.Blocks = []kv.Block{{CIDR: "fd00:1::1:0/112", Host: "b", Expires: live}, {CIDR: "fd00:1::2:0/112", Host: "e", Expires: live}}
	in.View.Exceptions = nil
	in.View.Hosts["e"] = kv.Host{ID: "e", Address: "10.98.0.15", Renewed: in.Now}
	in = backendtest.Witnessed(in)
	p6 := routing.Compute6(in)
	if got := strings.Join(backendtest.Routes(p6), "|"); got != "fd00:1::1:0/112 via fe80::b dev eth1" {
		t.Fatalf("host-gw IPv6 routes: %s", got)
	}
	if len(p6.Problems) != 1 || !strings.Contains(p6.Problems[0], "host e (10.98.0.15) registered no IPv6 link-local address") {
		t.Fatalf("problems: %v", p6.Problems)
	}
}
