// Package backend is the seam between the network driver and the ways a
// network can carry its containers' traffic, as flannel's pkg/backend is:
// the driver keeps the records, the locks and the order of things, and asks
// the network's Backend what to make in the kernel. One folder per backend:
//
//   - driver/vxlan: routed containers, peers behind a kernel VXLAN device
//   - driver/hostgw: routed containers, peers routed on the underlay
//   - driver/wireguard: routed containers, peers behind the host's
//     WireGuard device (-o encrypted)
//   - driver/macvlan: containers straight on a parent interface's segment
//
// driver/routed holds what the three routed backends share (veth, /32
// route, link-local gateway, isolation and NAT, cross-host routing).
//
// Backends keep no state of their own in their methods: every method gets
// the records it works on and may be called concurrently for different
// networks and endpoints (the one host-wide object a backend holds, the
// WireGuard device, guards itself). Kernel calls must survive being made
// twice.
package backend

import (
	"context"
	"net/netip"
	"strconv"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/errdefs"
)

// Backend is one way of carrying a network's traffic.
type Backend interface {
	// Describe says what the backend is called and which -o options only
	// it takes.
	Describe() Description
	// Create decides this host's part of a new network: its gateway, MTU,
	// devices, and what it reserves outside the kernel (macvlan's
	// host-access address). It refuses options the host cannot honour. It
	// may call the store; Remove undoes it.
	Create(ctx context.Context, n *Network, req CreateRequest) error
	// Ensure makes the network's kernel objects exist; it runs after Create
	// and at every reconcile.
	Ensure(n Network) error
	// Remove takes away what Create and Ensure made. others are the host's
	// other networks (shared objects go with the last user).
	Remove(ctx context.Context, n Network, others []Network) error
	// Restored adjusts a record written by an earlier version, given every
	// network of the host; it returns the record as it should be now.
	Restored(n Network, all []Network) Network

	// EnsureEndpoint makes the endpoint's interface (the one Docker moves
	// into the container) and the host's route to it.
	EnsureEndpoint(n Network, e Endpoint) error
	// DeleteEndpoint removes them; objects already gone are no error.
	DeleteEndpoint(n Network, e Endpoint) error
	// CheckEndpoint repairs the host's side of a live endpoint (reconcile)
	// and reports its state and the routes it wants.
	CheckEndpoint(n Network, e Endpoint) (EndpointState, error)
	// EndpointDrift says how the host's side of a live endpoint differs
	// from what CheckEndpoint makes it, changing nothing (tartan doctor).
	EndpointDrift(n Network, e Endpoint) ([]string, error)
	// Live says whether the endpoint's container may still be there.
	Live(n Network, e Endpoint) bool
	// Join says how the container is wired: its interface and routes.
	Join(n Network, e Endpoint) Join
	// PublishRefused says why ports cannot be published on the network,
	// or nil.
	PublishRefused(n Network, e Endpoint) error
	// Info is what docker network inspect shows of the endpoint, beyond
	// the keys every backend shows.
	Info(n Network, e Endpoint) map[string]string

	// Peers is how the network reaches the cluster's other hosts (false:
	// it does not route to them, their containers are on the same L2).
	Peers(n Network) (routing.Network, bool)
	// Firewall is the network as the firewall renders it (false: none of
	// its traffic crosses the host's IP stack).
	Firewall(n Network) (firewall.Pool, bool)
}

// Description is what a backend is, as the option parser and the cluster
// record see it.
type Description struct {
	// Name is the -o tartan.backend value.
	Name string
	// Options are the -o options only this backend takes.
	Options []Option
	// ClaimsVNI: the network's cluster record reserves a VXLAN network
	// identifier.
	ClaimsVNI bool
	// OwnGateway: the network's containers route through a gateway of the
	// backend's own (a link-local address on the host), not an address of
	// the pool, so Docker need not reserve one (GwAllocCheck, Docker 28+).
	OwnGateway bool
}

// Option is a backend's own -o option: Parse validates its value and sets
// it in the options.
type Option struct {
	Key   string
	Parse func(o *Options, value string) error
}

// BoolOption reads a true/false -o option: the one way a boolean option's
// value is read, and refused.
func BoolOption(key, value string) (bool, error) {
	b, err := strconv.ParseBool(value)
	if err != nil {
		return false, errdefs.Invalid("-o %s=%s is not a boolean: use true or false", key, value)
	}
	return b, nil
}

// Options are a network's validated -o options.
type Options struct {
	Backend       string
	VNI           int // vxlan: 0 allocates one
	DirectRouting bool
	MTU           int    // 0: from the underlay (or the macvlan parent)
	Parent        string // macvlan: "" for the default route's interface
	MacvlanMode   string // macvlan: bridge, private, vepa or passthru
	HostAccess    bool   // macvlan: a shim so the host reaches its containers
	Cluster       bool   // created on every host by the replicator
	IPv6          bool   // --ipv6: the network has an IPv6 pool too
	NAT66         bool   // routed: masquerade what leaves the IPv6 pool
	Policy        string // routed: the network policy default ("" is allow)
	Announce      bool   // host-gw, vxlan: -o tartan.bgp=true, the host's part of the pool announced over BGP
	StoreID       string // swarm: the manager's store identity
	Internal      bool
	Raw           map[string]string // the -o options as given
}

// CreateRequest is what Create decides from.
type CreateRequest struct {
	Options Options
	// Gateway is the gateway IPAM gave the network (--gateway, with the
	// pool's prefix length); invalid when there is none. Gateway6 is the
	// IPv6 pool's.
	Gateway  netip.Prefix
	Gateway6 netip.Prefix
	// Others are the host's other networks.
	Others []Network
}

// EndpointState is an endpoint's kernel state as CheckEndpoint found it.
type EndpointState struct {
	// Gone: the endpoint's host-side interface no longer exists (its
	// container is gone).
	Gone bool
	// Unjoined: the interface is here but no container took its other end.
	Unjoined bool
	// Routes are the host's routes to the endpoint, which reconcile keeps.
	Routes []kernel.Route
}

// Join is how the container is wired (libnetwork's Join response).
type Join struct {
	Interface string // the link Docker moves into the container
	// Gateway is the container's default gateway; invalid: none (internal
	// networks, macvlan networks without --gateway). Gateway6 is its IPv6
	// default gateway on dual-stack networks.
	Gateway  netip.Addr
	Gateway6 netip.Addr
	// Routes are static routes in the container.
	Routes []StaticRoute
}

// StaticRoute is a route in the container: through NextHop, or connected to
// the interface when NextHop is invalid.
type StaticRoute struct {
	Dst     netip.Prefix
	NextHop netip.Addr
}

// Host is what backends use of the host they run on.
type Host struct {
	ID         string // this host's ID
	VXLANPort  int
	SysctlRoot string // where the host's /proc/sys is mounted
	// Underlay finds the interface and address that carry the host's
	// traffic to its peers (ADVERTISE).
	Underlay func() (kernel.Underlay, error)
	Log      logrus.FieldLogger
}
