package vxlan

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/backend/backendtest"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/kv"
)

// vxlan routes every destination through the network's device to the
// host's VTEP, whatever its segment, with one neighbour and one FDB entry
// per host; with directrouting, hosts on this host's segment are routed on
// the underlay and only the others take the device.
func TestPeering(t *testing.T) {
	dev := kernel.VXLANName(7)
	net := routing.Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Device: dev, Peering: Peering{Device: dev, VNI: 7}}
	vx := routing.Compute(backendtest.Segments(net))
	want := "10.244.0.5/32 via 10.98.0.12 dev D onlink|10.244.0.64/26 via 10.98.0.12 dev D onlink|10.244.0.71/32 via 10.97.5.13 dev D onlink|10.244.0.128/26 via 10.98.0.12 dev D onlink|10.244.0.192/26 via 10.97.5.13 dev D onlink"
	if got := strings.Join(backendtest.Routes(vx), "|"); got != strings.ReplaceAll(want, " D ", " "+dev+" ") {
		t.Fatalf("vxlan routes:\n%s\nwant\n%s", got, want)
	}
	if len(vx.Neighs) != 2 || len(vx.FDBs) != 2 || len(vx.Problems) != 0 {
		t.Fatalf("one neighbour and one FDB entry per remote host: %+v", vx)
	}
	nb := slices.IndexFunc(vx.Neighs, func(n kernel.Neigh) bool { return n.IP.String() == "10.98.0.12" })
	fb := slices.IndexFunc(vx.FDBs, func(f kernel.FDB) bool { return f.Dst.String() == "10.98.0.12" })
	if nb < 0 || fb < 0 || vx.Neighs[nb].MAC != kernel.VTEPMAC("b", 7).String() || vx.FDBs[fb].MAC != kernel.VTEPMAC("b", 7).String() || vx.Neighs[nb].Link != dev {
		t.Fatalf("entries for b: %+v %+v", vx.Neighs, vx.FDBs)
	}

	net.Peering = Peering{Device: dev, VNI: 7, Direct: true}
	dr := routing.Compute(backendtest.Segments(net))
	if got := strings.Join(backendtest.Routes(dr), "|"); !strings.Contains(got, "10.244.0.64/26 via 10.98.0.12 dev eth1|") || !strings.Contains(got, "10.244.0.192/26 via 10.97.5.13 dev "+dev+" onlink") {
		t.Fatalf("directrouting routes: %s", got)
	}
	if len(dr.Neighs) != 1 || dr.Neighs[0].IP.String() != "10.97.5.13" || len(dr.FDBs) != 1 || len(dr.Problems) != 0 {
		t.Fatalf("directrouting uses VXLAN only for the peer off the segment: %+v", dr)
	}

	// IPv6: the next hop is the link-local address made of the peer's
	// VTEP MAC, its neighbour entry too.
	net.Peering = Peering{Device: dev, VNI: 7}
	in := backendtest.Segments(net)
	in.Net.Pool6 = netip.MustParsePrefix("fd00:1::/64")
	in.View.Blocks = []kv.Block{{CIDR: "fd00:1::1:0/112", Host: "c", Expires: in.Now.Add(time.Hour)}}
	in.View.Exceptions = nil
	p6 := routing.Compute6(backendtest.Witnessed(in))
	ll := kernel.LinkLocalOf(kernel.VTEPMAC("c", 7).String())
	if got := strings.Join(backendtest.Routes(p6), "|"); got != "fd00:1::1:0/112 via "+ll.String()+" dev "+dev+" onlink" {
		t.Fatalf("IPv6 routes: %s", got)
	}
	if len(p6.Neighs) != 1 || p6.Neighs[0].IP != ll || p6.FDBs[0].Dst.String() != "10.97.5.13" {
		t.Fatalf("IPv6 entries: %+v %+v", p6.Neighs, p6.FDBs)
	}
}
