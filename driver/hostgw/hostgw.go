// Package hostgw is the host-gw backend, flannel's host-gw: containers are
// routed (driver/routed) and every remote host's blocks are plain routes
// on the underlay through that host's address. No encapsulation, so no
// MTU cost and no device; every host must share this host's L2 segment
// (a peer that does not is reported in the network's problems and gets no
// route: use vxlan with directrouting for mixed segments).
package hostgw

import (
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/routed"
	"github.com/tartan-net/tartan/driver/routing"
)

// Name is the backend's -o tartan.backend value.
const Name = "host-gw"

// Backend is the host-gw backend.
type Backend struct{ routed.Base }

// New returns the backend for a host.
func New(h backend.Host, macvlan string) Backend {
	return Backend{routed.Base{Host: h, Macvlan: macvlan}}
}

// Describe names the backend and its one option of its own: -o
// tartan.bgp.
func (Backend) Describe() backend.Description {
	return routed.Describe(backend.Description{Name: Name, Options: []backend.Option{routed.AnnounceOption}})
}

// Peers are routed on the underlay, each through its host's address.
func (Backend) Peers(n backend.Network) (routing.Network, bool) {
	return routing.Network{ID: n.ID, Pool: n.PoolPrefix(), Pool6: n.Pool6Prefix(), Peering: Peering{}, Announce: n.Announce}, true
}

// Firewall is the routed one, with the peers' traffic arriving in clear on
// the underlay (a plain route per block).
func (b Backend) Firewall(n backend.Network) (firewall.Pool, bool) {
	p, ok := b.Base.Firewall(n)
	p.Underlay = true
	return p, ok
}
