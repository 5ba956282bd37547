// Package backendtest plans a backend's peers over a fixed two-segment
// cluster, for the backends' root-free tests.
package backendtest

import (
	"net/netip"
	"time"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
)

// Underlay is host "self"'s underlay: 192.0.2.10 on 192.0.2.0/24.
var Underlay = kernel.Underlay{Interface: "eth0", Address: netip.MustParseAddr("192.0.2.10"), Prefix: netip.MustParsePrefix("192.0.2.0/24"), MTU: 1500}

// WireGuard public keys of hosts "near" and "far".
const (
	NearKey = "YJHIPxAZTj+lWshYbkCKy78Q0wjDVE4iqjOv2GtuKlk="
	FarKey  = "StMdz7wFXgyW9vmlAXMZaABxFlniWIOZ3XnPJCfjyWM="
)

// Network is a network of pool 10.244.0.0/16 as a backend records it.
func Network(name string) backend.Network {
	return backend.Network{ID: "net1", Pool: "10.244.0.0/16", Backend: name, VNI: 7, Device: kernel.VXLANName(7), Gateway: "169.254.1.1", MTU: 1450}
}

// Plan is the peer plan of n through b on host "self" of a cluster where
// host "near" (192.0.2.11) shares its segment and host "far" (198.51.100.12)
// does not; each holds one block. ok is false when the backend has no peers.
func Plan(b backend.Backend, n backend.Network) (routing.Plan, bool) {
	p, ok := b.Peers(n)
	if !ok {
		return routing.Plan{}, false
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	view := routing.View{
		Hosts: map[string]kv.Host{
			"self": {ID: "self", Address: "192.0.2.10", Renewed: now},
			"near": {ID: "near", Address: "192.0.2.11", Renewed: now, WireGuardKey: NearKey, WireGuardPort: 51820},
			"far":  {ID: "far", Address: "198.51.100.12", Renewed: now, WireGuardKey: FarKey, WireGuardPort: 51820},
		},
		Blocks: []kv.Block{
			{CIDR: "10.244.0.0/26", Host: "self", Expires: now.Add(time.Hour)},
			{CIDR: "10.244.0.64/26", Host: "near", Expires: now.Add(time.Hour)},
			{CIDR: "10.244.0.128/26", Host: "far", Expires: now.Add(time.Hour)},
		},
		BlockBits: 26,
	}
	view.Seen, view.BlockSeen = kvtest.Sightings(view.Hosts, view.Blocks, time.Hour)
	return routing.Compute(routing.Input{Self: "self", Net: p, Underlay: Underlay, TTL: time.Hour, Now: now, View: view}), true
}

// Routes renders a plan's routes as ip route would, one per line.
func Routes(p routing.Plan) []string {
	out := make([]string, 0, len(p.Routes))
	for _, r := range p.Routes {
		out = append(out, r.String())
	}
	return out
}

// Segments is host "a"'s input for planning net over a cluster of four
// hosts on 10.244.0.0/16: "a" (this host) and "b" on this host's segment
// 10.98.0.0/24, "c" on another segment (10.97.5.13), "d" gone; b holds two
// blocks, c one, and three endpoints live away from their block's owner
// (10.244.0.70 at b in b's own block, 10.244.0.71 at c in b's block,
// 10.244.0.5 at b in a's), beside a gateway record and a gone host's
// endpoint. Its sightings are those a witness would hold.
func Segments(net routing.Network) routing.Input {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	view := routing.View{
		Hosts: map[string]kv.Host{
			"a": {ID: "a", Address: "10.98.0.11", Renewed: now},
			"b": {ID: "b", Address: "10.98.0.12", Renewed: now, LinkLocal6: "fe80::b"},
			"c": {ID: "c", Address: "10.97.5.13", Renewed: now},
			"d": {ID: "d", Address: "10.98.0.14", Renewed: now.Add(-48 * time.Hour)},
		},
		Blocks: []kv.Block{
			{CIDR: "10.244.0.0/26", Host: "a", Expires: live},
			{CIDR: "10.244.0.64/26", Host: "b", Expires: live},
			{CIDR: "10.244.0.128/26", Host: "b", Expires: live},
			{CIDR: "10.244.0.192/26", Host: "c", Expires: live},
			{CIDR: "10.244.1.0/26", Host: "d", Expires: now.Add(-time.Hour)},
		},
		Exceptions: []kv.Address{
			{IP: "10.244.0.70", Host: "b", Kind: kv.KindEndpoint},
			{IP: "10.244.0.71", Host: "c", Kind: kv.KindEndpoint},
			{IP: "10.244.0.5", Host: "b", Kind: kv.KindEndpoint},
			{IP: "10.244.0.1", Host: "b", Kind: kv.KindGateway},
			{IP: "10.244.1.9", Host: "d", Kind: kv.KindEndpoint},
		},
	}
	in := routing.Input{Self: "a", TTL: 24 * time.Hour, Now: now, View: view, Net: net,
		Underlay: kernel.Underlay{Interface: "eth1", Address: netip.MustParseAddr("10.98.0.11"), Prefix: netip.MustParsePrefix("10.98.0.0/24")}}
	return Witnessed(in)
}

// Witnessed gives a hand-made view the sightings a witness would hold had
// it seen each host renew when its record says and each lease renewed a
// lease lifetime before it expires.
func Witnessed(in routing.Input) routing.Input {
	in.View.Seen, in.View.BlockSeen = kvtest.Sightings(in.View.Hosts, in.View.Blocks, in.TTL)
	return in
}
