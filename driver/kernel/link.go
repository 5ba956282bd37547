package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Name prefixes of the links tartan owns.
const (
	EndpointPrefix = "tn"      // host side of an endpoint's veth
	PeerPrefix     = "tp"      // container side before Docker moves and renames it
	VXLANPrefix    = "tartan." // tartan.<vni>
)

// EndpointNames returns the deterministic host and container names of an
// endpoint's veth pair (13 characters each).
func EndpointNames(endpointID string) (host, peer string) {
	id := idPart(endpointID)
	return EndpointPrefix + id, PeerPrefix + id
}

// idPart is the part of a Docker ID in a link name: 11 characters, so that
// a two-letter prefix keeps the name within IFNAMSIZ with room to spare.
func idPart(id string) string { return id[:min(11, len(id))] }

func notFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}

// EnsureVeth creates the veth pair host/peer unless host exists already (the
// peer may then be inside a container). mac, when set, is the peer's MAC.
func EnsureVeth(host, peer string, mtu int, mac string) error {
	if l, err := netlink.LinkByName(host); err == nil {
		if l.Type() != "veth" {
			return fmt.Errorf("link %s exists and is a %s, not a veth: remove it", host, l.Type())
		}
		if mtu > 0 && l.Attrs().MTU != mtu {
			if err := netlink.LinkSetMTU(l, mtu); err != nil {
				return fmt.Errorf("set mtu %d on %s: %w", mtu, host, err)
			}
		}
		return nil
	} else if !notFound(err) {
		return fmt.Errorf("look up %s: %w", host, err)
	}
	// A stale peer from an earlier attempt would make the create fail.
	if err := DeleteLink(peer); err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: mtu}, PeerName: peer}
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return fmt.Errorf("mac address %q: %w", mac, err)
		}
		veth.PeerHardwareAddr = hw
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s/%s: %w", host, peer, err)
	}
	if mtu > 0 {
		if p, err := netlink.LinkByName(peer); err == nil {
			_ = netlink.LinkSetMTU(p, mtu)
		}
	}
	return nil
}

// ConfigureHostSide brings the host side up, gives it the link-local gateway
// address the container ARPs for, and routes the container's /32 to it.
func ConfigureHostSide(host string, gateway netip.Addr, ip netip.Addr) error {
	l, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("look up %s: %w", host, err)
	}
	addr := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(gateway, 32)), Scope: unix.RT_SCOPE_LINK}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("add gateway %s to %s: %w", gateway, host, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", host, err)
	}
	return ReplaceRoute(Route{Dst: netip.PrefixFrom(ip, 32), Link: host})
}

// ConfigureHostSide6 gives the host side of a dual-stack endpoint's veth
// its IPv6 part: IPv6 on (a host may default to it off), the link-local
// gateway the container's neighbour discovery asks for (no duplicate
// address detection: every endpoint veth of the network has the same one),
// and the route to the container's /128. sysctlRoot is where the host's
// /proc/sys is.
func ConfigureHostSide6(sysctlRoot, host string, gateway netip.Addr, ip netip.Addr) error {
	if err := EnableIPv6(sysctlRoot, host); err != nil {
		return err
	}
	l, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("look up %s: %w", host, err)
	}
	addr := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(gateway, 64)), Scope: unix.RT_SCOPE_LINK, Flags: unix.IFA_F_NODAD}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("add gateway %s to %s: %w", gateway, host, err)
	}
	return ReplaceRoute(Route{Dst: netip.PrefixFrom(ip, 128), Link: host})
}

// DeleteLink removes a link; a missing link is fine.
func DeleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if notFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !notFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// LinkIndex is an interface's index and hardware address.
func LinkIndex(name string) (int, net.HardwareAddr, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, nil, err
	}
	return l.Attrs().Index, l.Attrs().HardwareAddr, nil
}

// IndexExists says whether an interface has this index.
func IndexExists(index int) bool {
	_, err := netlink.LinkByIndex(index)
	return err == nil
}

// LinkExists says whether a link of that name exists here.
func LinkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// PeerInContainer says whether name is a veth whose other end is in
// another network namespace: a container's, which is alive while it holds it
// (the pair goes with the namespace).
func PeerInContainer(name string) bool {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return false
	}
	_, veth := l.(*netlink.Veth)
	return veth && l.Attrs().NetNsID >= 0
}

// Bridges lists the host's bridge interfaces.
func Bridges() ([]string, error) {
	ls, err := linkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range ls {
		if l.Type() == "bridge" {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

// Links lists the names of links whose names start with prefix.
func Links(prefix string) ([]string, error) {
	ls, err := linkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range ls {
		if strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

func setUp(l netlink.Link) error {
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

// SetLinkUp sets a link up (a device another package made, such as the
// WireGuard TUN device).
func SetLinkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	return setUp(l)
}

// SetMTU sets a link's MTU.
func SetMTU(name string, mtu int) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set the MTU of %s to %d: %w", name, mtu, err)
	}
	return nil
}

// LinkType is a link's kind ("wireguard", "tun", "veth"…), or "" when
// there is no such link.
func LinkType(name string) string {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return ""
	}
	return l.Type()
}

// AddWireGuard makes a kernel WireGuard link, down; it fails (with the
// kernel's "operation not supported") where the kernel has no WireGuard.
func AddWireGuard(name string, mtu int) error {
	if err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}}); err != nil {
		return fmt.Errorf("add WireGuard link %s: %w", name, err)
	}
	return nil
}
