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
		Net: Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), VNI: 7, Device: "tartan.7"}}

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

	in.Net.HostGW = true
	gw := Compute(witnessed(in))
	if got := routes(gw); got != "10.244.0.5/32 via 10.98.0.12 dev eth1|10.244.0.64/26 via 10.98.0.12 dev eth1|10.244.0.128/26 via 10.98.0.12 dev eth1" {
		t.Fatalf("host-gw routes: %s", got)
	}
	if len(gw.Problems) != 2 || !strings.Contains(gw.Problems[0], "not on this host's L2 segment 10.98.0.0/24") || !strings.Contains(gw.Problems[0], "tartan.directrouting=true") {
		t.Fatalf("host-gw must report the peer off the segment: %v", gw.Problems)
	}

	in.Net.HostGW, in.Net.Direct = false, true
	dr := Compute(witnessed(in))
	if got := routes(dr); !strings.Contains(got, "10.244.0.64/26 via 10.98.0.12 dev eth1|") || !strings.Contains(got, "10.244.0.192/26 via 10.97.5.13 dev tartan.7 onlink") {
		t.Fatalf("directrouting routes: %s", got)
	}
	if len(dr.Neighs) != 1 || dr.Neighs[0].IP.String() != "10.97.5.13" || len(dr.Problems) != 0 {
		t.Fatalf("directrouting uses VXLAN only for the peer off the segment: %+v", dr)
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
		Net: Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), VNI: 7, Device: "tartan.7"},
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
		Net: Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), VNI: 7, Device: "tartan.7"},
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

// TestPlanTunnels: a wireguard network routes every peer's blocks and
// exceptions through the tunnel device, whatever its segment, and plans one
// WireGuard peer per host with exactly those destinations; a host with no
// key or a malformed one gets no route and one problem; a rotated key is a
// changed tunnel; dual-stack plans merge into one peer per host.
func TestPlanTunnels(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	keyB := "YJHIPxAZTj+lWshYbkCKy78Q0wjDVE4iqjOv2GtuKlk="
	keyC := "StMdz7wFXgyW9vmlAXMZaABxFlniWIOZ3XnPJCfjyWM="
	view := View{
		Hosts: map[string]kv.Host{
			"a": {ID: "a", Address: "10.98.0.11", Renewed: now, WireGuardKey: "GXVmwrmyjEOYgr2Xy9eMkwEwDZx+HNfR3rF5OsGSGms=", WireGuardPort: 51820},
			"b": {ID: "b", Address: "10.98.0.12", Renewed: now, WireGuardKey: keyB, WireGuardPort: 51820},
			"c": {ID: "c", Address: "10.97.5.13", Renewed: now, WireGuardKey: keyC, WireGuardPort: 51999},
			"d": {ID: "d", Address: "10.98.0.14", Renewed: now},                                                     // no key
			"e": {ID: "e", Address: "10.98.0.15", Renewed: now, WireGuardKey: "bm90IGEga2V5", WireGuardPort: 51820}, // malformed
		},
		Blocks: []kv.Block{
			{CIDR: "10.244.0.0/26", Host: "a", Expires: live},
			{CIDR: "10.244.0.64/26", Host: "b", Expires: live},
			{CIDR: "10.244.0.192/26", Host: "c", Expires: live},
			{CIDR: "10.244.1.0/26", Host: "d", Expires: live},
			{CIDR: "10.244.1.64/26", Host: "e", Expires: live},
		},
		Exceptions: []kv.Address{{IP: "10.244.0.71", Host: "c", Kind: kv.KindEndpoint}},
	}
	under := kernel.Underlay{Interface: "eth1", Address: netip.MustParseAddr("10.98.0.11"), Prefix: netip.MustParsePrefix("10.98.0.0/24")}
	in := Input{Self: "a", Underlay: under, TTL: 24 * time.Hour, Now: now, View: view,
		Net: Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Tunnel: "tartan-wg"}}
	p := Compute(witnessed(in))
	if got, want := routes(p), "10.244.0.64/26 via 10.98.0.12 dev tartan-wg onlink|10.244.0.71/32 via 10.97.5.13 dev tartan-wg onlink|10.244.0.192/26 via 10.97.5.13 dev tartan-wg onlink"; got != want {
		t.Fatalf("routes:\n%s\nwant\n%s", got, want)
	}
	if len(p.Neighs) != 0 || len(p.FDBs) != 0 {
		t.Fatalf("a tunnel network has no neighbours or FDB entries: %+v", p)
	}
	want := []Tunnel{
		{Host: "b", Key: keyB, Endpoint: netip.MustParseAddrPort("10.98.0.12:51820"), Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.64/26")}},
		{Host: "c", Key: keyC, Endpoint: netip.MustParseAddrPort("10.97.5.13:51999"),
			Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.71/32"), netip.MustParsePrefix("10.244.0.192/26")}},
	}
	if !slices.EqualFunc(p.Tunnels, want, Tunnel.Equal) {
		t.Fatalf("tunnels:\n%+v\nwant\n%+v", p.Tunnels, want)
	}
	probs := strings.Join(p.Problems, "\n")
	if len(p.Problems) != 2 || !strings.Contains(probs, "host d (10.98.0.14) cannot be reached through WireGuard: it registered no WireGuard key") ||
		!strings.Contains(probs, `its WireGuard key "bm90IGEga2V5" is malformed`) {
		t.Fatalf("problems: %q", p.Problems)
	}
	// Two hosts with one key (a copied state folder), or a peer with this
	// host's key: WireGuard cannot tell them apart, so neither gets routes.
	clash := in
	clash.View.Hosts = map[string]kv.Host{}
	for id, h := range view.Hosts {
		clash.View.Hosts[id] = h
	}
	hc := clash.View.Hosts["c"]
	hc.WireGuardKey = keyB
	clash.View.Hosts["c"] = hc
	pc := Compute(witnessed(clash))
	if len(pc.Tunnels) != 0 || len(pc.Routes) != 0 || !strings.Contains(strings.Join(pc.Problems, "\n"), "hosts b, c registered the same WireGuard key") {
		t.Fatalf("shared key: routes %q tunnels %+v problems %q", routes(pc), pc.Tunnels, pc.Problems)
	}
	// b rotates its key: same routes, a changed tunnel (the memo does not
	// keep the old key).
	memo := &Memo{}
	in.Memo = memo
	_ = Compute(witnessed(in))
	keyB2 := "0vTp1pIYS3j/I+oYh9oD0x39Ueovfrlw+MYotoAmtw8="
	h := view.Hosts["b"]
	h.WireGuardKey = keyB2
	view.Hosts["b"] = h
	in.View = view
	p2 := Compute(witnessed(in))
	if len(p2.Tunnels) != 2 || routes(p2) != routes(p) || p2.Tunnels[0].Key != keyB2 || p2.Tunnels[0].Equal(p.Tunnels[0]) {
		t.Fatalf("after b's rotation: %+v", p2.Tunnels)
	}
	// Dual stack: b's IPv6 block joins its one peer; the route takes a
	// link-local next hop.
	in.Memo = nil
	in.Net.Pool6 = netip.MustParsePrefix("fd00:1::/64")
	v6 := View{Hosts: view.Hosts, Blocks: []kv.Block{{CIDR: "fd00:1::1:0/112", Host: "b", Expires: live}}}
	in6 := in
	in6.View = v6
	m := Merge(Compute(witnessed(in)), Compute6(witnessed(in6)))
	if len(m.Tunnels) != 2 || len(m.Tunnels[0].Allowed) != 2 || m.Tunnels[0].Allowed[1] != netip.MustParsePrefix("fd00:1::1:0/112") {
		t.Fatalf("merged tunnels: %+v", m.Tunnels)
	}
	if !strings.Contains(routes(m), "fd00:1::1:0/112 via "+kernel.LinkLocalOf(kernel.VTEPMAC("b", 0).String()).String()+" dev tartan-wg onlink") {
		t.Fatalf("IPv6 route: %s", routes(m))
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
		Net:      Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), HostGW: true},
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
