// Package bgp is the bgp backend, Calico's: containers are routed
// (driver/routed) as with host-gw, but this host programs no route to
// another host's blocks. It announces its own blocks (and its containers'
// addresses away from their block's owner) to its BGP peers, the
// datacenter's routers, with driver/bgp/speaker, and reaches the other
// hosts' containers through what the fabric routes. Hosts may sit on
// different subnets; containers are first-class addresses of the network:
// reached from anywhere the fabric routes, with nobody's source address
// rewritten.
package bgp

import (
	"context"
	"net/netip"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/routed"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/errdefs"
)

// Name is the backend's -o tartan.backend value.
const Name = "bgp"

// Backend is the bgp backend.
type Backend struct {
	routed.Base
	// Off says why this host cannot announce (BGP is not configured), or
	// "" when it can.
	Off string
}

// New returns the backend for a host; off says why the host's BGP speaker
// is not running ("" when it is).
func New(h backend.Host, macvlan, off string) Backend {
	return Backend{Base: routed.Base{Host: h, Macvlan: macvlan}, Off: off}
}

// Describe names the backend; -o tartan.bgp is always true on it.
func (Backend) Describe() backend.Description {
	return routed.Describe(backend.Description{Name: Name, Options: []backend.Option{routed.AnnounceOption}})
}

// Create refuses a network the host cannot announce.
func (b Backend) Create(ctx context.Context, n *backend.Network, req backend.CreateRequest) error {
	if b.Off != "" {
		return errdefs.Invalid("-o tartan.backend=bgp: %s", b.Off)
	}
	if v, ok := req.Options.Raw[routed.OptAnnounce]; ok && !req.Options.Announce {
		return errdefs.Invalid("-o %s=%s on a bgp network: a bgp network is always announced; use host-gw or vxlan for one that is not", routed.OptAnnounce, v)
	}
	n.Announce = true
	if n.Pool6 != "" {
		if u, err := b.Host.Underlay(); err != nil || !u.Global6.IsValid() {
			return errdefs.Invalid("--ipv6 on a bgp network: this host's underlay %s has no global IPv6 address, the next hop its IPv6 blocks would be announced with: give it one, or leave --ipv6 out", u.Interface)
		}
	}
	return b.Base.Create(ctx, n, req)
}

// Peers: no route to another host is made here (the fabric routes them);
// this host's part of the pool is announced.
func (Backend) Peers(n backend.Network) (routing.Network, bool) {
	return routing.Network{ID: n.ID, Pool: n.PoolPrefix(), Pool6: n.Pool6Prefix(), Peering: Peering{}, Announce: true}, true
}

// Firewall is the routed one, with the pool announced: the fabric brings
// any address to it on the underlay, and its traffic leaves with its own
// source address.
func (b Backend) Firewall(n backend.Network) (firewall.Pool, bool) {
	p, ok := b.Base.Firewall(n)
	p.Underlay, p.Announced, p.Fabric = true, true, true
	return p, ok
}

// Peering is bgp's rule for another host's destinations: none in this
// host's kernel (the fabric learned them from that host).
type Peering struct{}

// Peer needs nothing of a host.
func (Peering) Peer(*routing.Peer) string { return "" }

// Entries adds nothing: the host's default route, or what its peers
// route, reaches dst.
func (Peering) Entries(*routing.Input, netip.Prefix, *routing.Peer, *routing.Plan) string { return "" }
