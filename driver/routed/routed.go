// Package routed is what tartan's routed backends (driver/vxlan,
// driver/hostgw, driver/wireguard) share, as Calico's libnetwork plugin wires containers:
// each container gets a veth pair whose host end carries a /32 route to it
// and answers, as a link-local gateway, every ARP the container makes; the
// host forwards between its containers and its peers, and the firewall
// (driver/firewall) isolates and NATs by pool. The backends differ only in
// how peers are reached (routing.Network) and in the MTU they cost.
package routed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/errdefs"
)

// Describe fills in what every routed backend is: its containers' gateway
// is the host's link-local address, never one of the pool.
func Describe(d backend.Description) backend.Description {
	d.OwnGateway = true
	return d
}

// FirstGateway is the link-local gateway of a host's first routed network;
// the next ones take the following addresses. FirstGateway6 is the IPv6
// one of dual-stack networks.
var (
	FirstGateway  = netip.MustParseAddr("169.254.1.1")
	FirstGateway6 = netip.MustParseAddr("fe80::1")
)

// OptMTU is Docker's name for a network's MTU option.
const OptMTU = "com.docker.network.driver.mtu"

// OptAnnounce announces the host's part of a host-gw or vxlan network's
// pool over BGP (the bgp backend always does), so that the fabric routes
// outside clients to its containers with no NAT.
const OptAnnounce = "tartan.bgp"

// AnnounceOption is -o tartan.bgp, for the backends that take it.
var AnnounceOption = backend.Option{Key: OptAnnounce, Parse: func(o *backend.Options, v string) error {
	b, err := backend.BoolOption(OptAnnounce, v)
	o.Announce = b
	return err
}}

// Base implements the backend methods the routed backends share; they embed
// it and add how peers are reached.
type Base struct {
	Host backend.Host
	// Overhead is what the backend's encapsulation takes from the
	// underlay's MTU (0: none).
	Overhead int
	// Macvlan names the backend that puts containers on the underlay's
	// segment, for the refusal of a pool that overlaps it.
	Macvlan string
}

// Create picks the network's link-local gateway (one per network of the
// host) and MTU, and refuses a pool over the underlay's own subnet.
func (b Base) Create(_ context.Context, n *backend.Network, req backend.CreateRequest) error {
	u, err := b.Host.Underlay()
	if err != nil {
		return err
	}
	if err := CheckPool(n.PoolPrefix(), u, b.Macvlan); err != nil {
		return err
	}
	n.Gateway = NextGateway(req.Others).String()
	if n.Pool6 != "" {
		n.Gateway6 = NextGateway6(req.Others).String()
	}
	n.MTU, err = MTU(u, b.Overhead, req.Options.MTU)
	if err == nil && n.Pool6 != "" && n.MTU < minMTU6 {
		return errdefs.Invalid("MTU %d is below IPv6's least (%d): a dual-stack network needs -o %s=%d or more, and an underlay that allows it", n.MTU, minMTU6, OptMTU, minMTU6)
	}
	return err
}

// minMTU6 is the least MTU of an IPv6 link (RFC 8200).
const minMTU6 = 1280

// CheckPool refuses a routed network whose pool overlaps the host's
// underlay subnet: its more specific routes would send traffic for the
// hosts' own neighbours, the gateway and the store into the overlay.
func CheckPool(pool netip.Prefix, u kernel.Underlay, macvlan string) error {
	if !u.Prefix.IsValid() || !pool.Overlaps(u.Prefix) {
		return nil
	}
	return errdefs.Invalid("--subnet %s overlaps this host's underlay network %s (on %s): pick a subnet outside it, or use -o tartan.backend=%s to put containers on that segment",
		pool, u.Prefix, u.Interface, macvlan)
}

// NextGateway is the first link-local gateway address no other network of
// the host uses.
func NextGateway(others []backend.Network) netip.Addr {
	return nextFree(FirstGateway, others, func(n backend.Network) string { return n.Gateway })
}

// NextGateway6 is NextGateway for the IPv6 link-local gateways.
func NextGateway6(others []backend.Network) netip.Addr {
	return nextFree(FirstGateway6, others, func(n backend.Network) string { return n.Gateway6 })
}

// nextFree is the first address from first that no network's gw is.
func nextFree(first netip.Addr, others []backend.Network, gw func(backend.Network) string) netip.Addr {
	used := map[string]bool{}
	for _, n := range others {
		used[gw(n)] = true
	}
	a := first
	for used[a.String()] {
		a = a.Next()
	}
	return a
}

// MTU is the network's MTU: the underlay's less the encapsulation, or the
// one asked for when it fits.
func MTU(u kernel.Underlay, overhead, want int) (int, error) {
	limit := u.MTU - overhead
	if want == 0 {
		return limit, nil
	}
	if want > limit {
		return 0, errdefs.Invalid("-o %s=%d is larger than the underlay allows (%d on %s): use %d or less", OptMTU, want, limit, u.Interface, limit)
	}
	return want, nil
}

// Ensure turns forwarding on: routed networks need it. Docker turns it on
// too, but tartan does not rely on that.
// A dual-stack network turns IPv6 forwarding on as well, as Docker does
// for its own IPv6 networks (a host that takes its own IPv6 address from
// router advertisements keeps it only with accept_ra=2 on that interface).
func (b Base) Ensure(n backend.Network) error {
	if err := kernel.Sysctl(b.Host.SysctlRoot, "net.ipv4.ip_forward", "1"); err != nil {
		return fmt.Errorf("routed networks need forwarding: %w (the plugin mounts the host's /proc/sys at %s)", err, b.Host.SysctlRoot)
	}
	if n.Pool6 != "" {
		if err := kernel.Sysctl(b.Host.SysctlRoot, "net.ipv6.conf.all.forwarding", "1"); err != nil {
			return fmt.Errorf("dual-stack networks need IPv6 forwarding: %w (the plugin mounts the host's /proc/sys at %s)", err, b.Host.SysctlRoot)
		}
	}
	return nil
}

// Remove has nothing of its own to take away: the peers' entries are the
// driver's to clear, the device (if any) the backend's.
func (Base) Remove(context.Context, backend.Network, []backend.Network) error { return nil }

// Restored keeps the record as it is.
func (Base) Restored(n backend.Network, _ []backend.Network) backend.Network { return n }

// EnsureEndpoint makes the veth pair, the /32 route to the container and
// the gateway address on the host's end.
func (b Base) EnsureEndpoint(n backend.Network, e backend.Endpoint) error {
	if err := kernel.EnsureVeth(e.HostIf, e.PeerIf, n.MTU, e.MAC); err != nil {
		return err
	}
	return b.configureHostSide(n, e)
}

// configureHostSide gives the host's end of the veth the gateways and the
// routes to the container, IPv6 too on a dual-stack endpoint.
func (b Base) configureHostSide(n backend.Network, e backend.Endpoint) error {
	if err := kernel.ConfigureHostSide(e.HostIf, n.GatewayAddr(), e.Addr()); err != nil {
		return err
	}
	if e.IP6 == "" {
		return nil
	}
	return kernel.ConfigureHostSide6(b.Host.SysctlRoot, e.HostIf, n.Gateway6Addr(), e.Addr6())
}

// DeleteEndpoint removes the veth pair (its route goes with it).
func (Base) DeleteEndpoint(_ backend.Network, e backend.Endpoint) error {
	return DeleteVeth(e)
}

// DeleteVeth removes an endpoint's two links (either may be gone already:
// the container's end goes with the container).
func DeleteVeth(e backend.Endpoint) error {
	return errors.Join(kernel.DeleteLink(e.HostIf), kernel.DeleteLink(e.PeerIf))
}

// CheckEndpoint repairs the host's end of a live endpoint's veth (address,
// route) and reports whether its veth is gone or was never taken.
func (b Base) CheckEndpoint(n backend.Network, e backend.Endpoint) (backend.EndpointState, error) {
	if !kernel.LinkExists(e.HostIf) {
		return backend.EndpointState{Gone: true}, nil
	}
	st := backend.EndpointState{Unjoined: !kernel.PeerInContainer(e.HostIf),
		Routes: []kernel.Route{{Dst: netip.PrefixFrom(e.Addr(), 32), Link: e.HostIf}}}
	if e.IP6 != "" {
		st.Routes = append(st.Routes, kernel.Route{Dst: netip.PrefixFrom(e.Addr6(), 128), Link: e.HostIf})
	}
	return st, b.configureHostSide(n, e)
}

// EndpointDrift says how the host's end of the endpoint's veth differs from
// what CheckEndpoint makes it: down, without its gateway addresses, without
// its routes to the container.
func (Base) EndpointDrift(n backend.Network, e backend.Endpoint) ([]string, error) {
	if !kernel.LinkExists(e.HostIf) {
		return nil, nil // LinkDrift says so
	}
	var gw6, ip6 netip.Addr
	if e.IP6 != "" {
		gw6, ip6 = n.Gateway6Addr(), e.Addr6()
	}
	return kernel.HostSideDrift(e.HostIf, n.GatewayAddr(), e.Addr(), gw6, ip6)
}

// Live says whether the endpoint's veth is still there.
func (Base) Live(_ backend.Network, e backend.Endpoint) bool { return kernel.LinkExists(e.HostIf) }

// Join routes everything through the link-local gateway: a connected route
// to it, the pool through it, and the default route through it unless the
// network is internal.
func (Base) Join(n backend.Network, e backend.Endpoint) backend.Join {
	gw := n.GatewayAddr()
	j := backend.Join{Interface: e.PeerIf, Routes: []backend.StaticRoute{
		{Dst: netip.PrefixFrom(gw, 32)},
		{Dst: n.PoolPrefix(), NextHop: gw},
	}}
	if !n.Internal {
		j.Gateway = gw
	}
	if gw6 := n.Gateway6Addr(); e.IP6 != "" && gw6.IsValid() {
		// A connected /128 to the gateway makes the container's route
		// lookup of it pick this interface (every interface has fe80::/64).
		j.Routes = append(j.Routes, backend.StaticRoute{Dst: netip.PrefixFrom(gw6, 128)}, backend.StaticRoute{Dst: n.Pool6Prefix(), NextHop: gw6})
		if !n.Internal {
			j.Gateway6 = gw6
		}
	}
	return j
}

// PublishRefused: routed networks publish ports (DNAT to the container).
func (Base) PublishRefused(backend.Network, backend.Endpoint) error { return nil }

// Info shows the host's end of the endpoint's veth.
func (Base) Info(_ backend.Network, e backend.Endpoint) map[string]string {
	return map[string]string{"tartan.interface": e.HostIf}
}

// Firewall isolates the network's pool and NATs what leaves it. Its peers'
// traffic comes out of its VXLAN device, and with direct routing on the
// underlay too.
func (Base) Firewall(n backend.Network) (firewall.Pool, bool) {
	return firewall.Pool{Pool: n.PoolPrefix(), Internal: n.Internal, Device: n.Device, Underlay: n.Direct, Announced: n.Announce}, true
}
