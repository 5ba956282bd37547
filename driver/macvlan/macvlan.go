// Package macvlan is the macvlan backend: containers sit straight on a
// parent interface's L2 segment, as with Docker's own macvlan driver and
// with its option names (parent, macvlan_mode). No routes, no
// encapsulation, no firewall: the containers' frames never cross the host's
// IP stack. What tartan adds is the cluster-wide IPAM (two hosts on one
// segment never hand out the same address) and, with -o
// tartan.hostaccess=true, a shim on the parent through which the host
// reaches its own containers (macvlan keeps a parent from talking to its
// children).
package macvlan

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/internal/dockerid"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// Name is the backend's -o tartan.backend value (the IPAM's name for
// networks whose containers sit on the pool's L2).
const Name = ipam.BackendBridged

// Options only this backend takes: Docker's macvlan names, and tartan's
// host access.
const (
	OptParent     = "parent"
	OptMode       = "macvlan_mode"
	OptHostAccess = "tartan.hostaccess"
	// DefaultMode is Docker's default macvlan mode.
	DefaultMode = "bridge"
)

// Addresses is the part of the IPAM the backend uses: the host-access shim
// takes an address of its network.
type Addresses interface {
	RequestAddress(ctx context.Context, r ipam.AddressRequest) (netip.Prefix, error)
	ReleaseAddress(ctx context.Context, id ipam.PoolID, address string) error
}

// Backend is the macvlan backend.
type Backend struct {
	host    backend.Host
	addrs   Addresses
	cluster kv.Store
	skipped func(*kv.DecodeError)
}

// New returns the backend for a host. skipped hears of address records a
// listing could not read.
func New(h backend.Host, addrs Addresses, cluster kv.Store, skipped func(*kv.DecodeError)) Backend {
	return Backend{host: h, addrs: addrs, cluster: cluster, skipped: skipped}
}

// Describe names the backend and its options.
func (Backend) Describe() backend.Description {
	return backend.Description{Name: Name, Options: []backend.Option{
		{Key: OptParent, Parse: parseParent},
		{Key: OptMode, Parse: func(o *backend.Options, v string) error {
			if !kernel.ValidMacvlanMode(v) {
				return errdefs.Invalid("unknown -o %s=%s: use bridge, private, vepa or passthru", OptMode, v)
			}
			if o.HostAccess && v != DefaultMode {
				return hostAccessNeedsBridge()
			}
			o.MacvlanMode = v
			return nil
		}},
		{Key: OptHostAccess, Parse: func(o *backend.Options, v string) error {
			b, err := backend.BoolOption(OptHostAccess, v)
			if err != nil {
				return err
			}
			if b && o.MacvlanMode != "" && o.MacvlanMode != DefaultMode {
				return hostAccessNeedsBridge()
			}
			o.HostAccess = b
			return nil
		}},
	}}
}

func hostAccessNeedsBridge() error {
	return errdefs.Invalid("-o %s=true needs -o %s=%s (the host's shim reaches containers only in bridge mode)", OptHostAccess, OptMode, DefaultMode)
}

func parseParent(o *backend.Options, v string) error {
	if v == "" || len(v) > 15 || strings.ContainsAny(v, "/ \t:") {
		return errdefs.Invalid("-o %s=%q is not an interface name: use a host interface such as eth0, or eth0.100 for VLAN 100", OptParent, v)
	}
	if _, _, _, err := kernel.ParseVLANParent(v); err != nil {
		return errdefs.Invalid("-o %s=%s: %w", OptParent, v, err)
	}
	o.Parent = v
	return nil
}

// Create resolves and checks the network's parent on this host (at most one
// bridge or passthru network per parent) and, with tartan.hostaccess,
// reserves the shim's address. The gateway is the physical router.
func (b Backend) Create(ctx context.Context, n *backend.Network, req backend.CreateRequest) error {
	o := req.Options
	n.Gateway = ""
	if req.Gateway.IsValid() {
		if !n.PoolPrefix().Contains(req.Gateway.Addr()) {
			return errdefs.Invalid("gateway %s is outside subnet %s: give --gateway an address of the subnet (the physical router)", req.Gateway, n.Pool)
		}
		n.Gateway = req.Gateway.Addr().String()
	}
	if req.Gateway6.IsValid() {
		if !n.Pool6Prefix().Contains(req.Gateway6.Addr()) {
			return errdefs.Invalid("IPv6 gateway %s is outside subnet %s: give --gateway an address of the IPv6 subnet (the physical router)", req.Gateway6, n.Pool6)
		}
		n.Gateway6 = req.Gateway6.Addr().String()
	}
	n.Parent, n.Mode = o.Parent, o.MacvlanMode
	if n.Mode == "" {
		n.Mode = DefaultMode
	}
	if n.Parent == "" {
		name, err := kernel.DefaultRouteInterface()
		if err != nil {
			return errdefs.Invalid("%w", err)
		}
		n.Parent = name
	}
	for _, other := range sameParent(*n, req.Others) {
		if exclusive(other.Mode) || exclusive(n.Mode) {
			return errdefs.InUse("parent %s is already used by tartan macvlan network %s (%s mode): give -o parent= another interface or a VLAN sub-interface such as %s.<vlan>",
				n.Parent, dockerid.Short(other.ID), other.Mode, n.Parent)
		}
	}
	p, err := kernel.EnsureParent(n.Parent)
	if err != nil {
		return errdefs.Invalid("%w", err)
	}
	n.ParentCreated = p.Created || parentOwned(*n, req.Others)
	switch {
	case o.MTU == 0:
		n.MTU = p.MTU
	case o.MTU > p.MTU:
		return errdefs.Invalid("-o com.docker.network.driver.mtu=%d is larger than parent %s allows (%d): use %d or less", o.MTU, n.Parent, p.MTU, p.MTU)
	default:
		n.MTU = o.MTU
	}
	if o.HostAccess {
		n.Shim = kernel.ShimName(n.ID)
		n.ShimMAC = kernel.StableMAC("tartan-shim/" + b.host.ID + "/" + n.Pool).String()
		ip, err := b.shimAddress(ctx, *n)
		if err != nil {
			return err
		}
		n.ShimIP = ip.String()
	}
	return nil
}

// exclusive modes allow one network per parent: in bridge mode containers of
// two networks would reach each other directly, and passthru hands the
// parent to a single macvlan.
func exclusive(mode string) bool { return mode == "bridge" || mode == "passthru" }

// shimAddress reserves the shim's address in the network's pool for this
// host, or finds the one an interrupted attempt reserved (the shim's MAC is
// derived from the host and the pool, so it names the reservation).
func (b Backend) shimAddress(ctx context.Context, n backend.Network) (netip.Addr, error) {
	var found netip.Addr
	if _, err := kv.ListJSON(ctx, b.cluster, kv.AddressPrefix(n.Pool), func(_ string, _ uint64, a kv.Address) error {
		if a.Host == b.host.ID && a.MAC == n.ShimMAC && a.Kind == kv.KindEndpoint {
			found, _ = netip.ParseAddr(a.IP)
		}
		return nil
	}, b.skipped); err != nil {
		return netip.Addr{}, fmt.Errorf("look for the host-access address of %s: %w", n.Pool, err)
	}
	req := ipam.AddressRequest{Pool: poolID(n), Options: map[string]string{ipam.OptMACAddress: n.ShimMAC}}
	if found.IsValid() {
		req.Address = found.String()
	}
	p, err := b.addrs.RequestAddress(ctx, req)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("reserve an address for the host-access shim in %s: %w", n.Pool, err)
	}
	return p.Addr(), nil
}

func poolID(n backend.Network) ipam.PoolID {
	return ipam.PoolID{Space: n.Space, CIDR: n.PoolPrefix()}
}

// Ensure makes the parent (a VLAN link tartan created comes back if it was
// deleted) and the shim exist.
func (Backend) Ensure(n backend.Network) error {
	if _, err := kernel.EnsureParent(n.Parent); err != nil {
		return err
	}
	if n.Shim == "" {
		return nil
	}
	ip, err := netip.ParseAddr(n.ShimIP)
	if err != nil {
		return fmt.Errorf("network %s: shim address %q: %w", dockerid.Short(n.ID), n.ShimIP, err)
	}
	return kernel.EnsureShim(n.Shim, n.Parent, n.MTU, n.ShimMAC, ip)
}

// Remove takes away the shim and its address, and the parent when tartan
// made it and no other network of the host is left on it.
func (b Backend) Remove(ctx context.Context, n backend.Network, others []backend.Network) error {
	var errs []error
	if n.Shim != "" {
		errs = append(errs, kernel.DeleteLink(n.Shim))
		if n.ShimIP != "" {
			err := b.addrs.ReleaseAddress(ctx, poolID(n), n.ShimIP)
			if err != nil && !errors.Is(err, kv.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	if RemovesParent(n, others) {
		errs = append(errs, kernel.DeleteParent(n.Parent))
	}
	return errors.Join(errs...)
}

// A VLAN parent that tartan made is shared by every local macvlan network
// on it: each of their records says ParentCreated, so that whichever of them
// goes last removes the link, in whatever order they go.

// sameParent lists the other macvlan networks on n's parent.
func sameParent(n backend.Network, others []backend.Network) []backend.Network {
	var out []backend.Network
	for _, o := range others {
		if o.ID != n.ID && o.Backend == Name && o.Parent == n.Parent {
			out = append(out, o)
		}
	}
	return out
}

// parentOwned says whether tartan made n's parent: n's record says so, or
// the record of another local macvlan network on the same parent does.
func parentOwned(n backend.Network, others []backend.Network) bool {
	if n.ParentCreated {
		return true
	}
	for _, o := range sameParent(n, others) {
		if o.ParentCreated {
			return true
		}
	}
	return false
}

// RemovesParent says whether removing n takes its parent link with it:
// tartan made the link and no other local network is left on it.
func RemovesParent(n backend.Network, others []backend.Network) bool {
	return parentOwned(n, others) && len(sameParent(n, others)) == 0
}

// Restored marks a network on a parent that tartan made as sharing it.
// Records written before ownership was shared carry the mark only on the
// network that made the link.
func (Backend) Restored(n backend.Network, all []backend.Network) backend.Network {
	n.ParentCreated = parentOwned(n, all)
	return n
}

// EnsureEndpoint makes the container's macvlan link on the parent (Docker
// moves it into the container) and the shim's route to it.
func (Backend) EnsureEndpoint(n backend.Network, e backend.Endpoint) error {
	if _, err := kernel.EnsureMacvlan(kernel.Macvlan{Name: e.PeerIf, Parent: n.Parent, Mode: n.Mode, MTU: n.MTU, MAC: e.MAC}); err != nil {
		return err
	}
	if r, ok := shimRoute(n, e); ok {
		return kernel.ReplaceRoute(r)
	}
	return nil
}

// DeleteEndpoint removes the macvlan link while it is still on the host
// (in a container it goes with the container) and the shim's route.
func (Backend) DeleteEndpoint(n backend.Network, e backend.Endpoint) error {
	errs := []error{kernel.DeleteLink(e.HostIf), kernel.DeleteLink(e.PeerIf)}
	if r, ok := shimRoute(n, e); ok {
		errs = append(errs, kernel.DeleteRoute(r))
	}
	return errors.Join(errs...)
}

// shimRoute is the host's route to a local container of a hostaccess
// network: through the shim, from the shim's address.
func shimRoute(n backend.Network, e backend.Endpoint) (kernel.Route, bool) {
	if n.Shim == "" {
		return kernel.Route{}, false
	}
	src, _ := netip.ParseAddr(n.ShimIP)
	return kernel.Route{Dst: netip.PrefixFrom(e.Addr(), 32), Link: n.Shim, Src: src}, true
}

// CheckEndpoint repairs the shim's route to the endpoint; the macvlan link
// itself lives in the container, out of the host's sight.
func (Backend) CheckEndpoint(n backend.Network, e backend.Endpoint) (backend.EndpointState, error) {
	r, ok := shimRoute(n, e)
	if !ok {
		return backend.EndpointState{}, nil
	}
	return backend.EndpointState{Routes: []kernel.Route{r}}, kernel.ReplaceRoute(r)
}

// Live: a macvlan endpoint lives in its container, which the host cannot
// see; it is live until Docker deletes it.
func (Backend) Live(backend.Network, backend.Endpoint) bool { return true }

// Join hands the macvlan link to the container, with the physical router
// as its gateway when the network has one and is not internal.
func (Backend) Join(n backend.Network, e backend.Endpoint) backend.Join {
	j := backend.Join{Interface: e.PeerIf}
	if !n.Internal {
		j.Gateway = n.GatewayAddr()
		if e.IP6 != "" {
			j.Gateway6 = n.Gateway6Addr()
		}
	}
	return j
}

// PublishRefused: a macvlan container is reachable at its own address.
func (Backend) PublishRefused(n backend.Network, e backend.Endpoint) error {
	return errdefs.Invalid("ports cannot be published on macvlan network %s: the container is reachable at its own address %s on the parent's segment, remove -p", dockerid.Short(n.ID), e.IP)
}

// Info shows the parent and the mode.
func (Backend) Info(n backend.Network, _ backend.Endpoint) map[string]string {
	return map[string]string{"tartan.interface": "", "tartan.parent": n.Parent, "tartan.mode": n.Mode}
}

// Peers: none; the cluster's other hosts are on the segment.
func (Backend) Peers(backend.Network) (routing.Network, bool) { return routing.Network{}, false }

// Firewall: none; the containers' frames never cross the host's IP stack.
func (Backend) Firewall(backend.Network) (firewall.Pool, bool) { return firewall.Pool{}, false }

// EndpointDrift is nothing to compare: a macvlan endpoint has no host side.
func (Backend) EndpointDrift(backend.Network, backend.Endpoint) ([]string, error) { return nil, nil }
