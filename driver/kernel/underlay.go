package kernel

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Underlay is the interface and address a host talks to its peers over.
type Underlay struct {
	Interface string
	Address   netip.Addr
	Prefix    netip.Prefix // the address with its mask: the L2 segment's subnet
	MTU       int
	// LinkLocal6 is the interface's IPv6 link-local address, when it has
	// one: the next hop of peers' host-gw routes to dual-stack pools.
	LinkLocal6 netip.Addr
	// Global6 is its first global IPv6 address, when it has one: the next
	// hop this host announces for its IPv6 prefixes over BGP.
	Global6 netip.Addr
}

// FindUnderlay resolves ADVERTISE: an interface name, an IP address of this
// host, or empty for the interface of the default route.
func FindUnderlay(advertise string) (Underlay, error) {
	if advertise == "" {
		name, err := DefaultRouteInterface()
		if err != nil {
			return Underlay{}, errors.New("no default route to find the advertise address: set ADVERTISE to an interface or address (docker plugin set tartan:latest ADVERTISE=eth0)")
		}
		advertise = name
	}
	if ip, err := netip.ParseAddr(advertise); err == nil {
		links, err := linkList()
		if err != nil {
			return Underlay{}, fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			addrs, _ := addrList(l, netlink.FAMILY_V4)
			for _, a := range addrs {
				if got, _ := netip.AddrFromSlice(a.IP.To4()); got == ip {
					return underlayOf(l, ip)
				}
			}
		}
		return Underlay{}, fmt.Errorf("ADVERTISE=%s is not an address of this host: use one of its addresses or an interface name", advertise)
	}
	l, err := netlink.LinkByName(advertise)
	if err != nil {
		return Underlay{}, fmt.Errorf("ADVERTISE=%s: no such interface: use an interface name or an address of this host", advertise)
	}
	return underlayOf(l, netip.Addr{})
}

func underlayOf(l netlink.Link, ip netip.Addr) (Underlay, error) {
	addrs, err := addrList(l, netlink.FAMILY_V4)
	if err != nil || len(addrs) == 0 {
		return Underlay{}, fmt.Errorf("interface %s has no IPv4 address: set ADVERTISE to one that has", l.Attrs().Name)
	}
	u := Underlay{Interface: l.Attrs().Name, MTU: l.Attrs().MTU}
	for _, a := range addrs {
		got, _ := netip.AddrFromSlice(a.IP.To4())
		if ip.IsValid() && got != ip {
			continue
		}
		ones, _ := a.Mask.Size()
		u.Address, u.Prefix = got, netip.PrefixFrom(got, ones).Masked()
		if six, err := addrList(l, netlink.FAMILY_V6); err == nil {
			for _, a := range six {
				// A tentative address (its duplicate address detection
				// still running, right after the link came up) is the
				// one the interface will have.
				if a.Flags&unix.IFA_F_DADFAILED != 0 {
					continue
				}
				switch ip := addrOf(a.IP); {
				case ip.IsLinkLocalUnicast() && !u.LinkLocal6.IsValid():
					u.LinkLocal6 = ip
				case ip.IsGlobalUnicast() && !u.Global6.IsValid():
					u.Global6 = ip
				}
			}
		}
		return u, nil
	}
	return Underlay{}, fmt.Errorf("interface %s does not carry %s", l.Attrs().Name, ip)
}

// DefaultRouteInterface names the interface of the IPv4 default route.
func DefaultRouteInterface() (string, error) {
	routes, err := routeList(&netlink.Route{}, 0) // the main table
	if err != nil {
		return "", fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
				return l.Attrs().Name, nil
			}
		}
	}
	return "", errors.New("no -o parent and this host has no default route to take it from: give -o parent=<interface>")
}
