package routing

import (
	"fmt"
	"net/netip"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

// Peering is a routed backend's rule for reaching another host: what a
// destination of that host (one of its blocks, or an address that lives
// there away from its block) needs in this host's kernel. Compute judges
// what every backend shares (liveness, block and address records, the
// host's underlay address) and hands each live destination to the
// network's Peering. Each routed backend's folder holds its own, so
// routing names no backend. A Peering is a comparable value (Router.Add
// compares networks), and what Peer derives may depend only on a host's
// ID, address and WireGuard key and port (the Memo judges a host again
// when one of those changes); Entries reads the rest of the record.
type Peering interface {
	// Peer judges a host's record, once per change of its address or
	// WireGuard key and port (the Memo keeps the answer): it fills in what
	// Entries needs of the host (p.MAC, p.Tunnel) or says, in a sentence,
	// why this backend cannot reach the host at all (reported once; no
	// route to any of its destinations).
	Peer(p *Peer) string
	// Entries appends to plan what routes dst to p, or says, in a
	// sentence, why dst cannot be routed to it (reported; nothing added).
	Entries(in *Input, dst netip.Prefix, p *Peer, plan *Plan) string
}

// HostsJudge is a Peering that also judges the hosts together, once per
// plan: WireGuard knows a peer by its key alone, so hosts that registered
// one key cannot be told apart.
type HostsJudge interface {
	// JudgeHosts says why each host it names cannot be reached (a
	// sentence, reported once; no route to any of its destinations).
	JudgeHosts(hosts map[string]kv.Host) map[string]string
}

// Peer is a remote host as a Peering sees it.
type Peer struct {
	ID     string
	Record kv.Host    // as the host registered it
	Via    netip.Addr // its underlay address, checked: IPv4 unicast, outside the pool
	// MAC is a link-layer address the Peering derives for the host (a
	// VTEP's, or the one its IPv6 next hop is made from).
	MAC string
	// Tunnel is the host as a tunnel device knows it (Allowed empty), for
	// a Peering that routes through one.
	Tunnel Tunnel
	// First is true when Entries is handed this host for the first time
	// in a plan: entries per host (a neighbour, an FDB entry) go then.
	First bool

	// routing's own: the record the judgement was made of, the address
	// problem, the judgement and the plan that last handed it out.
	address, key, port string
	problem            string
	done               int
}

// UnderlayRoute appends the route of dst through p's underlay address on
// this host's underlay interface (p shares its L2 segment): for an IPv6
// destination through p's IPv6 link-local address there, which p must
// have registered.
func UnderlayRoute(in *Input, dst netip.Prefix, p *Peer, plan *Plan) string {
	hop := p.Via
	if in.V6 {
		// An IPv6 route cannot have an IPv4 next hop: the peer's
		// link-local address on the shared segment is it.
		if hop, _ = netip.ParseAddr(p.Record.LinkLocal6); !hop.Is6() || !hop.IsLinkLocalUnicast() {
			return fmt.Sprintf("host %s (%s) registered no IPv6 link-local address on its underlay interface: %s cannot be routed to it (enable IPv6 on its underlay interface)", p.ID, p.Via, dst)
		}
	}
	plan.Routes = append(plan.Routes, kernel.Route{Dst: dst, Link: in.Underlay.Interface, Via: hop})
	return ""
}

// OnSegment says whether p's underlay address is on this host's L2
// segment (a plain route through it works).
func OnSegment(in *Input, p *Peer) bool { return in.Underlay.Prefix.Contains(p.Via) }

// NextHop is the next hop of a route through a device that names the peer
// by it (onlink): p's underlay address, or for an IPv6 destination the
// link-local address made of p.MAC.
func NextHop(in *Input, p *Peer) netip.Addr {
	if in.V6 {
		return kernel.LinkLocalOf(p.MAC)
	}
	return p.Via
}
