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
