package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// macvlan networks put containers straight on the parent's L2 segment: no
// routes, no encapsulation, no firewall (their frames never cross the host's
// IP stack). What tartan adds to Docker's own macvlan is the cluster-wide
// IPAM: two hosts on one segment never hand out the same address.

// prepareMacvlan resolves and checks the network's parent on this host and,
// with tartan.hostaccess, reserves the shim's address. Called with d.mu held,
// before ensureNetwork; undoMacvlan reverses it.
func (d *Driver) prepareMacvlan(ctx context.Context, n *netRec, o NetworkOptions, data *network.IPAMData) error {
	if data.Gateway != "" {
		gw, err := netip.ParsePrefix(data.Gateway)
		if err != nil || !n.pool().Contains(gw.Addr()) {
			return kv.Invalid("gateway %s is outside subnet %s: give --gateway an address of the subnet (the physical router)", data.Gateway, n.Pool)
		}
		n.Gateway = gw.Addr().String()
	} else {
		n.Gateway = ""
	}
	n.Parent, n.Mode = o.Parent, o.MacvlanMode
	if n.Parent == "" {
		name, err := kernel.DefaultRouteInterface()
		if err != nil {
			return kv.Invalid("%v", err)
		}
		n.Parent = name
	}
	for _, other := range d.st.networks {
		if other.Backend != BackendMacvlan || other.Parent != n.Parent || other.ID == n.ID {
			continue
		}
		if exclusive(other.Mode) || exclusive(n.Mode) {
			return kv.InUse("parent %s is already used by tartan macvlan network %s (%s mode): give -o parent= another interface or a VLAN sub-interface such as %s.<vlan>",
				n.Parent, shortID(other.ID), other.Mode, n.Parent)
		}
	}
	p, err := kernel.EnsureParent(n.Parent)
	if err != nil {
		return kv.Invalid("%v", err)
	}
	n.ParentCreated = p.Created || parentOwned(*n, d.st.networks)
	switch {
	case o.MTU == 0:
		n.MTU = p.MTU
	case o.MTU > p.MTU:
		return kv.Invalid("-o %s=%d is larger than parent %s allows (%d): use %d or less", OptMTU, o.MTU, n.Parent, p.MTU, p.MTU)
	default:
		n.MTU = o.MTU
	}
	if o.HostAccess {
		n.Shim = kernel.ShimName(n.ID)
		n.ShimMAC = kernel.StableMAC("tartan-shim/" + d.cfg.Host + "/" + n.Pool).String()
		ip, err := d.shimAddress(ctx, *n)
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
func (d *Driver) shimAddress(ctx context.Context, n netRec) (netip.Addr, error) {
	var found netip.Addr
	if _, err := kv.ListJSON(ctx, d.cluster, kv.AddressPrefix(n.Pool), func(_ string, _ uint64, a kv.Address) error {
		if a.Host == d.cfg.Host && a.MAC == n.ShimMAC && a.Kind == kv.KindEndpoint {
			found, _ = netip.ParseAddr(a.IP)
		}
		return nil
	}, d.skipped); err != nil {
		return netip.Addr{}, fmt.Errorf("look for the host-access address of %s: %w", n.Pool, err)
	}
	req := ipam.AddressRequest{Pool: ipam.PoolID{Space: n.Space, CIDR: n.pool()}, Options: map[string]string{ipam.OptMACAddress: n.ShimMAC}}
	if found.IsValid() {
		req.Address = found.String()
	}
	p, err := d.addrs.RequestAddress(ctx, req)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("reserve an address for the host-access shim in %s: %w", n.Pool, err)
	}
	return p.Addr(), nil
}

// undoMacvlan removes what prepareMacvlan and ensureNetwork made for a
// network this host no longer has (or failed to create).
func (d *Driver) undoMacvlan(ctx context.Context, n netRec) error {
	var errs []error
	if n.Shim != "" {
		errs = append(errs, kernel.DeleteLink(n.Shim))
		if n.ShimIP != "" {
			err := d.addrs.ReleaseAddress(ctx, ipam.PoolID{Space: n.Space, CIDR: n.pool()}, n.ShimIP)
			if err != nil && !errors.Is(err, kv.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	if removeParent(n, d.st.networks) {
		errs = append(errs, kernel.DeleteParent(n.Parent))
	}
	return errors.Join(errs...)
}

// A VLAN parent that tartan made is shared by every local macvlan network
// on it: each of their records says ParentCreated, so that whichever of them
// goes last removes the link, in whatever order they go.

// parentOwned says whether tartan made n's parent: n's record says so, or
// the record of another local macvlan network on the same parent does.
func parentOwned(n netRec, networks map[string]netRec) bool {
	if n.ParentCreated {
		return true
	}
	for _, o := range networks {
		if o.ID != n.ID && o.Backend == BackendMacvlan && o.Parent == n.Parent && o.ParentCreated {
			return true
		}
	}
	return false
}

// parentInUse says whether another local network hangs off n's parent.
func parentInUse(n netRec, networks map[string]netRec) bool {
	for _, o := range networks {
		if o.ID != n.ID && o.Backend == BackendMacvlan && o.Parent == n.Parent {
			return true
		}
	}
	return false
}

// removeParent says whether removing n takes its parent link with it:
// tartan made the link and no other local network is left on it.
func removeParent(n netRec, networks map[string]netRec) bool {
	return n.Backend == BackendMacvlan && parentOwned(n, networks) && !parentInUse(n, networks)
}

// shareParentOwnership marks every macvlan network on a parent that tartan
// made as sharing it. Records written before ownership was shared carry the
// mark only on the network that made the link; Restore evens them out.
func shareParentOwnership(networks map[string]netRec) {
	for id, n := range networks {
		if n.Backend == BackendMacvlan && !n.ParentCreated && parentOwned(n, networks) {
			n.ParentCreated = true
			networks[id] = n
		}
	}
}

// ensureMacvlanNetwork makes the parent (a VLAN link tartan created comes
// back if it was deleted) and the shim exist.
func ensureMacvlanNetwork(n netRec) error {
	if _, err := kernel.EnsureParent(n.Parent); err != nil {
		return err
	}
	if n.Shim == "" {
		return nil
	}
	ip, err := netip.ParseAddr(n.ShimIP)
	if err != nil {
		return fmt.Errorf("network %s: shim address %q: %w", shortID(n.ID), n.ShimIP, err)
	}
	return kernel.EnsureShim(n.Shim, n.Parent, n.MTU, n.ShimMAC, ip)
}

// shimRoute is the host's route to a local container of a hostaccess
// network: through the shim, from the shim's address.
func shimRoute(n netRec, e epRec) (kernel.Route, bool) {
	if n.Shim == "" {
		return kernel.Route{}, false
	}
	src, _ := netip.ParseAddr(n.ShimIP)
	return kernel.Route{Dst: netip.PrefixFrom(e.ip(), 32), Link: n.Shim, Src: src}, true
}

// ensureMacvlanEndpoint makes the container's macvlan link on the parent
// (Docker moves it into the container) and the shim's route to it.
func ensureMacvlanEndpoint(n netRec, e epRec) error {
	if _, err := kernel.EnsureMacvlan(kernel.Macvlan{Name: e.PeerIf, Parent: n.Parent, Mode: n.Mode, MTU: n.MTU, MAC: e.MAC}); err != nil {
		return err
	}
	if r, ok := shimRoute(n, e); ok {
		return kernel.ReplaceRoute(r)
	}
	return nil
}
