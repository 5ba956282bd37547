package kernel

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FlushConntrack removes the connection tracking entries of an address
// that is going away: flows it started, flows to it, and flows DNAT'd to it
// through a published port. Otherwise an established entry delivers a
// removed container's flows to the next one given its address, and a UDP
// flow to a republished port stays pinned to the old container (issue 24,
// audit M6; Docker's bridge driver flushes the same).
func FlushConntrack(ip netip.Addr) error {
	if !ip.IsValid() {
		return nil
	}
	var filters []netlink.CustomConntrackFilter
	for _, tp := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackOrigDstIP, netlink.ConntrackReplyAnyIP} {
		f := &netlink.ConntrackFilter{}
		if err := f.AddIP(tp, ip.AsSlice()); err != nil {
			return err
		}
		filters = append(filters, f)
	}
	return flush(ip, filters)
}

// FlushPortConntrack removes the entries of a published port that goes:
// flows to hostPort that were DNAT'd to ip.
func FlushPortConntrack(ip netip.Addr, proto string, hostPort int) error {
	p := protoNumber(proto)
	if !ip.IsValid() || p == 0 {
		return nil
	}
	f := &netlink.ConntrackFilter{}
	if err := f.AddProtocol(p); err != nil {
		return err
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, uint16(hostPort)); err != nil {
		return err
	}
	if err := f.AddIP(netlink.ConntrackReplySrcIP, ip.AsSlice()); err != nil {
		return err
	}
	return flush(ip, []netlink.CustomConntrackFilter{f})
}

func flush(ip netip.Addr, filters []netlink.CustomConntrackFilter) error {
	family := netlink.InetFamily(unix.AF_INET)
	if ip.Is6() {
		family = unix.AF_INET6
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...); err != nil {
		return fmt.Errorf("flush connection tracking entries of %s: %w", ip, err)
	}
	return nil
}

func protoNumber(p string) uint8 {
	switch p {
	case "tcp":
		return unix.IPPROTO_TCP
	case "udp":
		return unix.IPPROTO_UDP
	case "sctp":
		return unix.IPPROTO_SCTP
	}
	return 0
}
