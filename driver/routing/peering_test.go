package routing

import (
	"net/netip"

	"github.com/tartan-net/tartan/driver/kernel"
)

// devicePeering routes every destination through one device to the peer's
// underlay address, with one neighbour and FDB entry per peer, as an
// encapsulating backend does: routing's tests need a Peering and cannot
// import a backend's (each backend tests its own).
type devicePeering struct{ device string }

func (devicePeering) Peer(p *Peer) string {
	p.MAC = kernel.VTEPMAC(p.ID, 7).String()
	return ""
}

func (d devicePeering) Entries(in *Input, dst netip.Prefix, p *Peer, plan *Plan) string {
	hop := NextHop(in, p)
	plan.Routes = append(plan.Routes, kernel.Route{Dst: dst, Link: d.device, Via: hop, Onlink: true})
	if p.First {
		plan.Neighs = append(plan.Neighs, kernel.Neigh{Link: d.device, IP: hop, MAC: p.MAC})
		plan.FDBs = append(plan.FDBs, kernel.FDB{Link: d.device, MAC: p.MAC, Dst: p.Via})
	}
	return ""
}

// underlayPeering routes every destination on the underlay.
type underlayPeering struct{}

func (underlayPeering) Peer(*Peer) string { return "" }

func (underlayPeering) Entries(in *Input, dst netip.Prefix, p *Peer, plan *Plan) string {
	return UnderlayRoute(in, dst, p, plan)
}

// vxlanNet is a network routed through device tartan.7.
func vxlanNet(pool string) Network {
	return Network{Pool: netip.MustParsePrefix(pool), Device: "tartan.7", Peering: devicePeering{"tartan.7"}}
}
