package driver

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

func TestPlanPeers(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	snap := snapshot{
		Hosts: map[string]kv.Host{
			"a": {ID: "a", Address: "10.98.0.11", Renewed: now},
			"b": {ID: "b", Address: "10.98.0.12", Renewed: now},
			"c": {ID: "c", Address: "10.97.5.13", Renewed: now}, // another segment
			"d": {ID: "d", Address: "10.98.0.14", Renewed: now.Add(-48 * time.Hour)},
		},
		Blocks: []kv.Block{
			{CIDR: "10.244.0.0/26", Host: "a", Expires: live},
			{CIDR: "10.244.0.64/26", Host: "b", Expires: live},
			{CIDR: "10.244.0.128/26", Host: "b", Expires: live},
			{CIDR: "10.244.0.192/26", Host: "c", Expires: live},
			{CIDR: "10.244.1.0/26", Host: "d", Expires: now.Add(-time.Hour)}, // expired, host gone
		},
		Addrs: []kv.Address{
			{IP: "10.244.0.70", Host: "b", Kind: kv.KindEndpoint},
			{IP: "10.244.0.71", Host: "c", Kind: kv.KindEndpoint}, // borrowed from b's block
			{IP: "10.244.0.5", Host: "b", Kind: kv.KindEndpoint},  // borrowed from a's (ours): reach it at b
			{IP: "10.244.0.1", Host: "b", Kind: kv.KindGateway},
			{IP: "10.244.1.9", Host: "d", Kind: kv.KindEndpoint}, // its host is gone: no route
		},
	}
	under := kernel.Underlay{Interface: "eth1", Address: netip.MustParseAddr("10.98.0.11"), Prefix: netip.MustParsePrefix("10.98.0.0/24")}
	in := planInput{Self: "a", Underlay: under, TTL: 24 * time.Hour, Now: now, Snap: snap,
		Net: netRec{Pool: "10.244.0.0/16", Backend: BackendVXLAN, VNI: 7, Device: "tartan.7"}}

	vx := planPeers(in)
	got := routes(vx)
	want := "10.244.0.5/32 via 10.98.0.12 dev tartan.7 onlink|10.244.0.64/26 via 10.98.0.12 dev tartan.7 onlink|10.244.0.71/32 via 10.97.5.13 dev tartan.7 onlink|10.244.0.128/26 via 10.98.0.12 dev tartan.7 onlink|10.244.0.192/26 via 10.97.5.13 dev tartan.7 onlink"
	if got != want {
		t.Fatalf("vxlan routes:\n%s\nwant\n%s", got, want)
	}
	if len(vx.Neighs) != 2 || len(vx.FDBs) != 2 || len(vx.Problems) != 0 {
		t.Fatalf("one neighbour and one FDB entry per remote host: %+v", vx)
	}
	if vx.Neighs[0].MAC != kernel.VTEPMAC("b", 7).String() || vx.FDBs[0].Dst.String() != "10.98.0.12" {
		t.Fatalf("entries for b: %+v %+v", vx.Neighs[0], vx.FDBs[0])
	}

	in.Net.Backend = BackendHostGW
	gw := planPeers(in)
	if got := routes(gw); got != "10.244.0.5/32 via 10.98.0.12 dev eth1|10.244.0.64/26 via 10.98.0.12 dev eth1|10.244.0.128/26 via 10.98.0.12 dev eth1" {
		t.Fatalf("host-gw routes: %s", got)
	}
	if len(gw.Problems) != 2 || !strings.Contains(gw.Problems[0], "not on this host's L2 segment 10.98.0.0/24") || !strings.Contains(gw.Problems[0], "tartan.directrouting=true") {
		t.Fatalf("host-gw must report the peer off the segment: %v", gw.Problems)
	}

	in.Net.Backend, in.Net.Direct = BackendVXLAN, true
	dr := planPeers(in)
	if got := routes(dr); !strings.Contains(got, "10.244.0.64/26 via 10.98.0.12 dev eth1|") || !strings.Contains(got, "10.244.0.192/26 via 10.97.5.13 dev tartan.7 onlink") {
		t.Fatalf("directrouting routes: %s", got)
	}
	if len(dr.Neighs) != 1 || dr.Neighs[0].IP.String() != "10.97.5.13" || len(dr.Problems) != 0 {
		t.Fatalf("directrouting uses VXLAN only for the peer off the segment: %+v", dr)
	}
}

func routes(p peerPlan) string {
	var s []string
	for _, r := range p.Routes {
		s = append(s, r.String())
	}
	return strings.Join(s, "|")
}
