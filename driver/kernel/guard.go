package kernel

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// GuardProtocol marks the unreachable routes that cover a routed network's
// whole pool ("tartan-guard"), apart from the routes of RouteProtocol so
// that neither's reconciliation touches the other's.
const GuardProtocol = netlink.RouteProtocol(85)

// A pool's guard route is "unreachable <pool>": the most specific routes
// (an endpoint's own, a peer's block) win, and what is left of the pool (a
// free address of this host's block, a block nobody holds, the block of a
// host that lapsed) goes nowhere, instead of out of the host's default
// route with a container's source (issue 24, audit M4; Calico installs
// such routes for its blocks).
func guardRoute(p netip.Prefix) *netlink.Route {
	return &netlink.Route{Dst: prefixNet(p), Protocol: GuardProtocol, Type: unix.RTN_UNREACHABLE, Table: unix.RT_TABLE_MAIN}
}

// EnsureGuard installs the guard route of a pool.
func EnsureGuard(p netip.Prefix) error {
	if err := netlink.RouteReplace(guardRoute(p)); err != nil {
		return fmt.Errorf("route unreachable %s: %w", p, err)
	}
	return nil
}

// DeleteGuard removes the guard route of a pool; a missing one is fine.
func DeleteGuard(p netip.Prefix) error {
	if err := netlink.RouteDel(guardRoute(p)); err != nil && !errors.Is(err, unix.ESRCH) && !notFound(err) {
		return fmt.Errorf("delete route unreachable %s: %w", p, err)
	}
	return nil
}

// Guards lists the pools that have a guard route, IPv4 and IPv6.
func Guards() ([]netip.Prefix, error) {
	rs, err := mainRoutes(GuardProtocol)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, r := range rs {
		if r.Dst != nil {
			ones, _ := r.Dst.Mask.Size()
			out = append(out, netip.PrefixFrom(addrOf(r.Dst.IP), ones))
		}
	}
	return out, nil
}

// HasIPsecPolicies says whether the host has IPsec (xfrm) policies: traffic
// the eBPF fast path sends straight out of a device would go around them
// (issue 24, audit L1).
func HasIPsecPolicies() (bool, error) {
	ps, err := xfrmPolicyList(netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("list IPsec policies: %w", err)
	}
	return len(ps) > 0, nil
}
