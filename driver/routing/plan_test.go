package routing

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
)

func TestPlanPeers(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	snap := View{
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
		Exceptions: []kv.Address{
			{IP: "10.244.0.70", Host: "b", Kind: kv.KindEndpoint},
			{IP: "10.244.0.71", Host: "c", Kind: kv.KindEndpoint}, // borrowed from b's block
			{IP: "10.244.0.5", Host: "b", Kind: kv.KindEndpoint},  // borrowed from a's (ours): reach it at b
			{IP: "10.244.0.1", Host: "b", Kind: kv.KindGateway},
			{IP: "10.244.1.9", Host: "d", Kind: kv.KindEndpoint}, // its host is gone: no route
		},
	}
	under := kernel.Underlay{Interface: "eth1", Address: netip.MustParseAddr("10.98.0.11"), Prefix: netip.MustParsePrefix("10.98.0.0/24")}
	in := Input{Self: "a", Underlay: under, TTL: 24 * time.Hour, Now: now, View: snap,
		Net: Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Device: "tartan.7", Peering: devicePeering{"tartan.7"}}}

	vx := Compute(witnessed(in))
	got := routes(vx)
	want := "10.244.0.5/32 via 10.98.0.12 dev tartan.7 onlink|10.244.0.64/26 via 10.98.0.12 dev tartan.7 onlink|10.244.0.71/32 via 10.97.5.13 dev tartan.7 onlink|10.244.0.128/26 via 10.98.0.12 dev tartan.7 onlink|10.244.0.192/26 via 10.97.5.13 dev tartan.7 onlink"
	if got != want {
		t.Fatalf("vxlan routes:\n%s\nwant\n%s", got, want)
	}
	if len(vx.Neighs) != 2 || len(vx.FDBs) != 2 || len(vx.Problems) != 0 {
		t.Fatalf("one neighbour and one FDB entry per remote host: %+v", vx)
	}
	nb := slices.IndexFunc(vx.Neighs, func(n kernel.Neigh) bool { return n.IP.String() == "10.98.0.12" })
	fb := slices.IndexFunc(vx.FDBs, func(f kernel.FDB) bool { return f.Dst.String() == "10.98.0.12" })
	if nb < 0 || fb < 0 || vx.Neighs[nb].MAC != kernel.VTEPMAC("b", 7).String() || vx.FDBs[fb].MAC != kernel.VTEPMAC("b", 7).String() {
		t.Fatalf("entries for b: %+v %+v", vx.Neighs, vx.FDBs)
	}

}

func routes(p Plan) string {
	var s []string
	for _, r := range p.Routes {
		s = append(s, r.String())
	}
	return strings.Join(s, "|")
}

// H2: a block record only had to overlap the pool to become a route on
// every host, so "0.0.0.0/0" replaced every host's default route and
// "10.0.0.0/8" captured a whole range; blocks of another size than the
// pool's were routed too. Before the fix the three blocks below became
// three routes via b and no problem was reported.
func TestPlanPeersRejectsForeignPrefixes(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	in := Input{Self: "a", TTL: 24 * time.Hour, Now: now,
		Net: Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Device: "tartan.7", Peering: devicePeering{"tartan.7"}},
		View: View{
			Hosts:     map[string]kv.Host{"b": {ID: "b", Address: "10.98.0.12", Renewed: now}},
			BlockBits: 26,
			Blocks: []kv.Block{
				{CIDR: "0.0.0.0/0", Host: "b", Expires: live},
				{CIDR: "10.0.0.0/8", Host: "b", Expires: live},
				{CIDR: "10.244.0.0/20", Host: "b", Expires: live}, // inside, but not a /26
			},
		}}
	plan := Compute(witnessed(in))
	if len(plan.Routes) != 0 || len(plan.Neighs) != 0 || len(plan.FDBs) != 0 {
		t.Fatalf("foreign blocks were routed: %s", routes(plan))
	}
	if len(plan.Problems) != 3 {
		t.Fatalf("want one problem per rejected block, got %q", plan.Problems)
	}
	for i, want := range []string{`"0.0.0.0/0" of host b ignored: not inside the network's pool 10.244.0.0/16`,
		`"10.0.0.0/8" of host b ignored: not inside`, `"10.244.0.0/20" of host b ignored: pool 10.244.0.0/16 has /26 blocks`} {
		if !strings.Contains(plan.Problems[i], want) {
			t.Errorf("problem %d: %q lacks %q", i, plan.Problems[i], want)
		}
	}
}

// H2: host addresses and address records from the store were used
// unchecked: a host registered at 127.0.0.1, 0.0.0.0, a multicast or
// link-local address, or inside the pool itself, became a next hop, and
// address records outside the pool were dropped without a word. Before the
// fix this plan had six routes and no problems.
func TestPlanPeersRejectsBadNextHopsAndAddresses(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	hosts := map[string]kv.Host{"good": {ID: "good", Address: "10.98.0.12", Renewed: now}}
	var blocks []kv.Block
	bad := []string{"127.0.0.1", "0.0.0.0", "224.0.0.5", "169.254.1.1", "10.244.9.9", "fe80::1", "nonsense"}
	for i, addr := range append([]string{"10.98.0.12"}, bad...) {
		id := "good"
		if i > 0 {
			id = fmt.Sprintf("bad%d", i)
			hosts[id] = kv.Host{ID: id, Address: addr, Renewed: now}
		}
		blocks = append(blocks, kv.Block{CIDR: fmt.Sprintf("10.244.%d.0/26", i), Host: id, Expires: live})
	}
	blocks = append(blocks, kv.Block{CIDR: "10.244.100.5/26", Host: "good", Expires: live}) // host bits set
	in := Input{Self: "a", TTL: 24 * time.Hour, Now: now,
		Net: Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Device: "tartan.7", Peering: devicePeering{"tartan.7"}},
		View: View{Hosts: hosts, BlockBits: 26, Blocks: blocks, Exceptions: []kv.Address{
			{IP: "10.245.0.9", Host: "good", Kind: kv.KindEndpoint}, // outside the pool
			{IP: "bogus", Host: "good", Kind: kv.KindEndpoint},
		}}}
	plan := Compute(witnessed(in))
	if got := routes(plan); got != "10.244.0.0/26 via 10.98.0.12 dev tartan.7 onlink" {
		t.Fatalf("routes: %s", got)
	}
	if len(plan.Problems) != len(bad)+3 {
		t.Fatalf("want one problem per rejected record, got %d:\n%s", len(plan.Problems), strings.Join(plan.Problems, "\n"))
	}
	all := strings.Join(plan.Problems, "\n")
	for _, want := range append(bad, "10.244.100.5/26", "host bits set", "10.245.0.9", "bogus") {
		if !strings.Contains(all, want) {
			t.Errorf("no problem names %q:\n%s", want, all)
		}
	}
}

// witnessed gives a hand-made view the sightings a witness would hold had
// it seen each host renew when its record says and each lease renewed a
// lease lifetime before it expires.
func witnessed(in Input) Input {
	in.View.Seen, in.View.BlockSeen = kvtest.Sightings(in.View.Hosts, in.View.Blocks, in.TTL)
	return in
}

// Issue 24, audit L10: an address record naming another host for an
// address a container of this host has (a bad record, or a duplicate) does
// not replace the container's own route; the plan names it.
func TestPlanSkipsRecordsOfLocalAddresses(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	in := Input{Self: "a", TTL: time.Hour, Now: now,
		Underlay: kernel.Underlay{Interface: "eth1", Address: netip.MustParseAddr("10.98.0.11"), Prefix: netip.MustParsePrefix("10.98.0.0/24")},
		Net:      Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Peering: underlayPeering{}},
		Local:    func(a netip.Addr) bool { return a.String() == "10.244.0.5" },
		View: View{BlockBits: 26,
			Hosts:      map[string]kv.Host{"a": {ID: "a", Address: "10.98.0.11", Renewed: now}, "b": {ID: "b", Address: "10.98.0.12", Renewed: now}},
			Blocks:     []kv.Block{{CIDR: "10.244.0.0/26", Host: "a", Expires: now.Add(time.Hour)}},
			Exceptions: []kv.Address{{IP: "10.244.0.5", Host: "b", Kind: kv.KindEndpoint}, {IP: "10.244.0.6", Host: "b", Kind: kv.KindEndpoint}}}}
	p := Compute(witnessed(in))
	if got := routes(p); got != "10.244.0.6/32 via 10.98.0.12 dev eth1" {
		t.Fatalf("routes: %s (want only the record of an address no local container has)", got)
	}
	if !strings.Contains(strings.Join(p.Problems, "\n"), "address record 10.244.0.5 of host b ignored: a container of this host has that address") {
		t.Fatalf("problems: %v", p.Problems)
	}
}

// A network that announces (bgp) puts in its plan this host's own live
// blocks and its own containers' addresses away from their block's owner;
// no other host's, no gateway record, nothing when it does not announce.
func TestPlanAnnounce(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	view := View{
		Hosts: map[string]kv.Host{
			"a": {ID: "a", Address: "10.98.0.11", Renewed: now},
			"b": {ID: "b", Address: "10.97.0.12", Renewed: now}, // another subnet: no matter
		},
		Blocks: []kv.Block{
			{CIDR: "10.244.0.0/26", Host: "a", Expires: live},
			{CIDR: "10.244.0.64/26", Host: "b", Expires: live},
			{CIDR: "10.244.0.128/26", Host: "b", Expires: live},
		},
		Exceptions: []kv.Address{
			{IP: "10.244.0.70", Host: "b", Kind: kv.KindEndpoint}, // in its own block
			{IP: "10.244.0.5", Host: "b", Kind: kv.KindEndpoint},  // borrowed from a's block (--ip)
			{IP: "10.244.0.65", Host: "a", Kind: kv.KindEndpoint}, // a's, in b's block
			{IP: "10.244.0.1", Host: "b", Kind: kv.KindGateway},
		},
	}
	under := kernel.Underlay{Interface: "eth1", Address: netip.MustParseAddr("10.97.0.12"), Prefix: netip.MustParsePrefix("10.97.0.0/24")}
	in := Input{Self: "b", Underlay: under, TTL: 24 * time.Hour, Now: now, View: view,
		Net: Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Announce: true}}
	for _, c := range []struct {
		self, want string
		announce   bool
	}{
		{"b", "[10.244.0.5/32 10.244.0.64/26 10.244.0.128/26]", true},
		{"a", "[10.244.0.0/26 10.244.0.65/32]", true},
		{"b", "[]", false},
	} {
		in.Self, in.Net.Announce = c.self, c.announce
		p := Compute(witnessed(in))
		if got := fmt.Sprint(p.Announce); got != c.want || len(p.Routes) != 0 || len(p.Problems) != 0 {
			t.Errorf("host %s (announce %v): announces %s, routes %v, problems %v; want %s and no route, no problem", c.self, c.announce, got, p.Routes, p.Problems, c.want)
		}
	}
}
