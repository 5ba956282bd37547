package hostgw

import (
	"fmt"
	"net/netip"

	"github.com/tartan-net/tartan/driver/routing"
)

// Peering is host-gw's rule: every destination of another host is a plain
// route on the underlay through that host's address, so every host must
// share this host's L2 segment; a destination of a host that does not
// gets no route and a problem that says what to use instead.
type Peering struct{}

// Peer needs nothing of a host beyond its underlay address.
func (Peering) Peer(*routing.Peer) string { return "" }

// Entries routes dst on the underlay through p's address.
func (Peering) Entries(in *routing.Input, dst netip.Prefix, p *routing.Peer, plan *routing.Plan) string {
	if !routing.OnSegment(in, p) {
		return fmt.Sprintf("host %s (%s) is not on this host's L2 segment %s: host-gw cannot reach %s; use -o tartan.backend=vxlan -o tartan.directrouting=true",
			p.ID, p.Via, in.Underlay.Prefix, dst)
	}
	return routing.UnderlayRoute(in, dst, p, plan)
}
