package wireguard

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

func routes(p routing.Plan) string { return strings.Join(backendtest.Routes(p), "|") }

// TestPeering: a wireguard network routes every peer's blocks and
// exceptions through the tunnel device, whatever its segment, and plans one
// WireGuard peer per host with exactly those destinations; a host with no
// key or a malformed one gets no route and one problem; a rotated key is a
// changed tunnel; dual-stack plans merge into one peer per host.
func TestPeering(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	keyB := "YJHIPxAZTj+lWshYbkCKy78Q0wjDVE4iqjOv2GtuKlk="
	keyC := "StMdz7wFXgyW9vmlAXMZaABxFlniWIOZ3XnPJCfjyWM="
	view := routing.View{
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
	in := routing.Input{Self: "a", Underlay: under, TTL: 24 * time.Hour, Now: now, View: view,
		Net: routing.Network{Pool: netip.MustParsePrefix("10.244.0.0/16"), Tunnel: "tartan-wg", Peering: Peering{Device: "tartan-wg"}}}
	p := routing.Compute(backendtest.Witnessed(in))
	if got, want := routes(p), "10.244.0.64/26 via 10.98.0.12 dev tartan-wg onlink|10.244.0.71/32 via 10.97.5.13 dev tartan-wg onlink|10.244.0.192/26 via 10.97.5.13 dev tartan-wg onlink"; got != want {
		t.Fatalf("routes:\n%s\nwant\n%s", got, want)
	}
	if len(p.Neighs) != 0 || len(p.FDBs) != 0 {
		t.Fatalf("a tunnel network has no neighbours or FDB entries: %+v", p)
	}
	want := []routing.Tunnel{
		{Host: "b", Key: keyB, Endpoint: netip.MustParseAddrPort("10.98.0.12:51820"), Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.64/26")}},
		{Host: "c", Key: keyC, Endpoint: netip.MustParseAddrPort("10.97.5.13:51999"),
			Allowed: []netip.Prefix{netip.MustParsePrefix("10.244.0.71/32"), netip.MustParsePrefix("10.244.0.192/26")}},
	}
	if !slices.EqualFunc(p.Tunnels, want, routing.Tunnel.Equal) {
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
	pc := routing.Compute(backendtest.Witnessed(clash))
	if len(pc.Tunnels) != 0 || len(pc.Routes) != 0 || !strings.Contains(strings.Join(pc.Problems, "\n"), "hosts b, c registered the same WireGuard key") {
		t.Fatalf("shared key: routes %q tunnels %+v problems %q", routes(pc), pc.Tunnels, pc.Problems)
	}
	// b rotates its key: same routes, a changed tunnel (the memo does not
	// keep the old key).
	memo := &routing.Memo{}
	in.Memo = memo
	_ = routing.Compute(backendtest.Witnessed(in))
	keyB2 := "0vTp1pIYS3j/I+oYh9oD0x39Ueovfrlw+MYotoAmtw8="
	h := view.Hosts["b"]
	h.WireGuardKey = keyB2
	view.Hosts["b"] = h
	in.View = view
	p2 := routing.Compute(backendtest.Witnessed(in))
	if len(p2.Tunnels) != 2 || routes(p2) != routes(p) || p2.Tunnels[0].Key != keyB2 || p2.Tunnels[0].Equal(p.Tunnels[0]) {
		t.Fatalf("after b's rotation: %+v", p2.Tunnels)
	}
	// Dual stack: b's IPv6 block joins its one peer; the route takes a
	// link-local next hop.
	in.Memo = nil
	in.Net.Pool6 = netip.MustParsePrefix("fd00:1::/64")
	v6 := routing.View{Hosts: view.Hosts, Blocks: []kv.Block{{CIDR: "fd00:1::1:0/112", Host: "b", Expires: live}}}
	in6 := in
	in6.View = v6
	m := routing.Merge(routing.Compute(backendtest.Witnessed(in)), routing.Compute6(backendtest.Witnessed(in6)))
	if len(m.Tunnels) != 2 || len(m.Tunnels[0].Allowed) != 2 || m.Tunnels[0].Allowed[1] != netip.MustParsePrefix("fd00:1::1:0/112") {
		t.Fatalf("merged tunnels: %+v", m.Tunnels)
	}
	if !strings.Contains(routes(m), "fd00:1::1:0/112 via "+kernel.LinkLocalOf(kernel.VTEPMAC("b", 0).String()).String()+" dev tartan-wg onlink") {
		t.Fatalf("IPv6 route: %s", routes(m))
	}
}
