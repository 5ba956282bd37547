package kernel

import (
	"errors"
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
	f, err := portFilter(p, hostPort)
	if err != nil {
		return err
	}
	if err := f.AddIP(netlink.ConntrackReplySrcIP, ip.AsSlice()); err != nil {
		return err
	}
	return flush(ip, []netlink.CustomConntrackFilter{f})
}

// portFilter matches the flows of protocol p whose original destination
// port is hostPort.
func portFilter(p uint8, hostPort int) (*netlink.ConntrackFilter, error) {
	f := &netlink.ConntrackFilter{}
	if err := f.AddProtocol(p); err != nil {
		return nil, err
	}
	if err := f.AddPort(netlink.ConntrackOrigDstPort, uint16(hostPort)); err != nil {
		return nil, err
	}
	return f, nil
}

// FlushPublishedPort removes the UDP flows to a port that is published
// from now on: an entry made while nothing, or another container, held the
// port would keep the flow off the new DNAT rule for as long as the flow
// goes on (every datagram renews it). Run after the rule is in place.
// hostIP unset or unspecified: every address of the host, both families.
// TCP flows are left alone (a new connection makes a new entry); so are
// SCTP's, which the netlink library reads without their ports (a filter
// by port would match none).
func FlushPublishedPort(proto string, hostIP netip.Addr, hostPort int) error {
	p := protoNumber(proto)
	if p != unix.IPPROTO_UDP {
		return nil
	}
	f, err := portFilter(p, hostPort)
	if err != nil {
		return err
	}
	one := hostIP.IsValid() && !hostIP.IsUnspecified()
	if one {
		if err := f.AddIP(netlink.ConntrackOrigDstIP, hostIP.Unmap().AsSlice()); err != nil {
			return err
		}
	}
	var errs []error
	for _, fam := range []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()} {
		if !one || hostIP.Unmap().Is4() == fam.Is4() {
			errs = append(errs, flush(fam, []netlink.CustomConntrackFilter{f}))
		}
	}
	return errors.Join(errs...)
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
