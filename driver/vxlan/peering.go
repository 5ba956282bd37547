package vxlan

import (
	"net/netip"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
)

// Peering is vxlan's rule, flannel's: per remote host a neighbour entry
// (its VTEP MAC at its next hop) and an FDB entry (that MAC at its
// underlay address) on the network's device, and a route to each of its
// destinations through the device. With Direct (directrouting), a host on
// this host's L2 segment is routed on the underlay instead, as host-gw
// does.
type Peering struct {
	Device string // the network's VXLAN device
	VNI    int
	Direct bool
}

// Peer derives the host's VTEP MAC on this network.
func (v Peering) Peer(p *routing.Peer) string {
	p.MAC = kernel.VTEPMAC(p.ID, v.VNI).String()
	return ""
}

// Entries routes dst through the device to p's VTEP (or, directly routed,
// on the underlay).
func (v Peering) Entries(in *routing.Input, dst netip.Prefix, p *routing.Peer, plan *routing.Plan) string {
	if v.Direct && routing.OnSegment(in, p) {
		return routing.UnderlayRoute(in, dst, p, plan)
	}
	hop := routing.NextHop(in, p) // IPv6: the peer's VTEP as a next hop IPv6 routes take
	plan.Routes = append(plan.Routes, kernel.Route{Dst: dst, Link: v.Device, Via: hop, Onlink: true})
	if p.First {
		plan.Neighs = append(plan.Neighs, kernel.Neigh{Link: v.Device, IP: hop, MAC: p.MAC})
		plan.FDBs = append(plan.FDBs, kernel.FDB{Link: v.Device, MAC: p.MAC, Dst: p.Via})
	}
	return ""
}
