package kernel

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HostSideDrift says how the host's end of an endpoint's veth differs from
// what ConfigureHostSide (and, with ip6 valid, ConfigureHostSide6) makes
// it, changing nothing: down, without its link-local gateway address, or
// without the route to the container's address. A missing link is the
// caller's to report.
func HostSideDrift(host string, gateway, ip, gateway6, ip6 netip.Addr) ([]string, error) {
	l, err := netlink.LinkByName(host)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", host, err)
	}
	var out []string
	if l.Attrs().Flags&net.FlagUp == 0 {
		out = append(out, fmt.Sprintf("its link %s is down", host))
	}
	check := func(family int, gw, ip netip.Addr, bits int) error {
		addrs, err := addrList(l, family)
		if err != nil {
			return err
		}
		has := false
		for _, a := range addrs {
			if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == gw {
				has = true
			}
		}
		if !has {
			out = append(out, fmt.Sprintf("its link %s lacks the gateway address %s", host, gw))
		}
		filter := &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
		rs, err := routeListFamily(family, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		for _, r := range rs {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones == bits && addrOf(r.Dst.IP) == ip {
					return nil
				}
			}
		}
		out = append(out, fmt.Sprintf("missing route %s dev %s", netip.PrefixFrom(ip, bits), host))
		return nil
	}
	if err := check(netlink.FAMILY_V4, gateway, ip, 32); err != nil {
		return nil, err
	}
	if ip6.IsValid() && gateway6.IsValid() {
		if err := check(netlink.FAMILY_V6, gateway6, ip6, 128); err != nil {
			return nil, err
		}
	}
	return out, nil
}
