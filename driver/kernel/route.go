package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks every route tartan installs ("tartan" in rt_protos).
const RouteProtocol = netlink.RouteProtocol(84)

// Route is a route tartan owns: to Dst out of Link, via Via when set (onlink
// when Onlink).
type Route struct {
	Dst    netip.Prefix
	Link   string
	Via    netip.Addr
	Src    netip.Addr // preferred source, when set
	Onlink bool
}

func (r Route) String() string {
	s := r.Dst.String()
	if r.Via.IsValid() {
		s += " via " + r.Via.String()
	}
	if r.Link != "" {
		s += " dev " + r.Link
	}
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	if r.Onlink {
		s += " onlink"
	}
	return s
}

func (r Route) netlink() (*netlink.Route, error) {
	nr := &netlink.Route{Dst: prefixNet(r.Dst), Protocol: RouteProtocol, Scope: netlink.SCOPE_UNIVERSE}
	if r.Link != "" {
		l, err := netlink.LinkByName(r.Link)
		if err != nil {
			return nil, fmt.Errorf("route %s: look up %s: %w", r, r.Link, err)
		}
		nr.LinkIndex = l.Attrs().Index
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.Src.IsValid() {
		nr.Src = r.Src.AsSlice()
	}
	if r.Onlink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr, nil
}

// ReplaceRoute installs or updates a route.
func ReplaceRoute(r Route) error {
	nr, err := r.netlink()
	if err != nil {
		return err
	}
	if err := netlink.RouteReplace(nr); err != nil {
		return fmt.Errorf("route %s: %w", r, err)
	}
	return nil
}

// mainRoutes lists the main-table routes of one protocol, IPv4 and IPv6.
func mainRoutes(proto netlink.RouteProtocol) ([]netlink.Route, error) {
	filter := &netlink.Route{Protocol: proto, Table: unix.RT_TABLE_MAIN}
	var rs []netlink.Route
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		got, err := routeListFamily(family, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		rs = append(rs, got...)
	}
	return rs, nil
}

// OwnedRoutes lists the main-table routes tartan installed, IPv4 and IPv6.
func OwnedRoutes() ([]Route, error) {
	rs, err := mainRoutes(RouteProtocol)
	if err != nil {
		return nil, err
	}
	names := map[int]string{}
	var out []Route
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		name, ok := names[r.LinkIndex]
		if !ok {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			names[r.LinkIndex] = name
		}
		ones, _ := r.Dst.Mask.Size()
		route := Route{Dst: netip.PrefixFrom(addrOf(r.Dst.IP), ones), Link: name, Onlink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
		if r.Gw != nil {
			route.Via = addrOf(r.Gw)
		}
		if r.Src != nil {
			route.Src = addrOf(r.Src)
		}
		out = append(out, route)
	}
	return out, nil
}

// addrOf reads a netlink address: IPv4 as IPv4, IPv6 as IPv6.
func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap() // netlink may hand an IPv4 address in 16 bytes
}

// HostRoutes lists the destinations of the host's own IPv4 routes in the
// main table: connected subnets, Docker's bridges, routes to the LAN or a
// VPN. The default route and tartan's routes (protocol 84) are left out.
func HostRoutes() ([]netip.Prefix, error) {
	rs, err := routeList(&netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	return hostPrefixes(rs), nil
}

func hostPrefixes(rs []netlink.Route) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range rs {
		if r.Dst == nil || r.Protocol == RouteProtocol {
			continue
		}
		dst, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, bits := r.Dst.Mask.Size()
		if !ok || bits != 32 || ones == 0 {
			continue
		}
		out = append(out, netip.PrefixFrom(dst, ones).Masked())
	}
	return out
}

// OverlapsHostRoute says whether p overlaps a destination of HostRoutes. A
// failed lookup counts as no overlap: the caller's own checks still hold.
func OverlapsHostRoute(p netip.Prefix) bool {
	rs, err := HostRoutes()
	if err != nil {
		return false
	}
	for _, r := range rs {
		if r.Overlaps(p) {
			return true
		}
	}
	return false
}

// DeleteRoute removes a route tartan owns; a missing route is fine.
func DeleteRoute(r Route) error {
	nr, err := r.netlink()
	if notFound(err) || (err != nil && !LinkExists(r.Link)) {
		return nil // its link is gone and the route with it
	}
	if err != nil {
		return err
	}
	if err := netlink.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) && !notFound(err) {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
