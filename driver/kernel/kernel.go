// Package kernel is tartan's only netlink user. Every call is ensure-or-adopt
// and every delete of a missing object succeeds, so that a plugin that was
// killed half-way can run the same calls again.
package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks every route tartan installs ("tartan" in rt_protos).
const RouteProtocol = netlink.RouteProtocol(84)

// Name prefixes of the links tartan owns.
const (
	EndpointPrefix = "tn"      // host side of an endpoint's veth
	PeerPrefix     = "tp"      // container side before Docker moves and renames it
	VXLANPrefix    = "tartan." // tartan.<vni>
)

// EndpointNames returns the deterministic host and container names of an
// endpoint's veth pair (13 characters each).
func EndpointNames(endpointID string) (host, peer string) {
	id := endpointID
	if len(id) > 11 {
		id = id[:11]
	}
	return EndpointPrefix + id, PeerPrefix + id
}

// VXLANName is the name of a network's VXLAN device.
func VXLANName(vni int) string { return fmt.Sprintf("%s%d", VXLANPrefix, vni) }

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
	ls, err := netlink.LinkList()
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
	ls, err := netlink.LinkList()
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

// OwnedRoutes lists the IPv4 main-table routes tartan installed.
func OwnedRoutes() ([]Route, error) {
	filter := &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
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
		dst, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, _ := r.Dst.Mask.Size()
		route := Route{Dst: netip.PrefixFrom(dst, ones), Link: name, Onlink: r.Flags&int(netlink.FLAG_ONLINK) != 0}
		if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok && r.Gw != nil {
			route.Via = gw
		}
		if src, ok := netip.AddrFromSlice(r.Src.To4()); ok && r.Src != nil {
			route.Src = src
		}
		out = append(out, route)
	}
	return out, nil
}

// HostRoutes lists the destinations of the host's own IPv4 routes in the
// main table: connected subnets, Docker's bridges, routes to the LAN or a
// VPN. The default route and tartan's routes (protocol 84) are left out.
func HostRoutes() ([]netip.Prefix, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
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

// VXLAN describes a network's VXLAN device.
type VXLAN struct {
	Name   string
	VNI    int
	Port   int
	Local  netip.Addr // underlay address
	Parent string     // underlay interface
	MTU    int
	MAC    net.HardwareAddr // VTEPMAC of this host
}

// EnsureVXLAN creates the device or adopts an existing one that matches; one
// that does not match is recreated.
func EnsureVXLAN(v VXLAN) error {
	parent, err := netlink.LinkByName(v.Parent)
	if err != nil {
		return fmt.Errorf("vxlan %s: underlay interface %s: %w", v.Name, v.Parent, err)
	}
	want := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: v.Name, MTU: v.MTU},
		VxlanId:      v.VNI,
		VtepDevIndex: parent.Attrs().Index,
		SrcAddr:      v.Local.AsSlice(),
		Port:         v.Port,
		Learning:     false,
	}
	want.HardwareAddr = v.MAC
	if l, err := netlink.LinkByName(v.Name); err == nil {
		cur, ok := l.(*netlink.Vxlan)
		if ok && cur.VxlanId == v.VNI && cur.Port == v.Port && cur.VtepDevIndex == want.VtepDevIndex &&
			net.IP(want.SrcAddr).Equal(cur.SrcAddr) && !cur.Learning {
			if cur.MTU != v.MTU {
				if err := netlink.LinkSetMTU(l, v.MTU); err != nil {
					return fmt.Errorf("vxlan %s: set mtu %d: %w", v.Name, v.MTU, err)
				}
			}
			if v.MAC != nil && cur.HardwareAddr.String() != v.MAC.String() {
				if err := netlink.LinkSetHardwareAddr(l, v.MAC); err != nil {
					return fmt.Errorf("vxlan %s: set mac %s: %w", v.Name, v.MAC, err)
				}
			}
			return setUp(l)
		}
		if err := netlink.LinkDel(l); err != nil {
			return fmt.Errorf("vxlan %s: replace mismatched device: %w", v.Name, err)
		}
	} else if !notFound(err) {
		return fmt.Errorf("look up %s: %w", v.Name, err)
	}
	if err := netlink.LinkAdd(want); err != nil {
		if other := vxlanUsing(v.Port, v.VNI, v.Name); other != "" {
			return fmt.Errorf("create vxlan %s: %w: the VXLAN device %s of another program already receives VNI %d on UDP port %d on this host "+
				"(flannel uses VNI 1 on port 8472, Cilium every VNI on 8472): set VXLAN_PORT to a free port on every host, or give the network another -o tartan.vni",
				v.Name, err, other, v.VNI, v.Port)
		}
		return fmt.Errorf("create vxlan %s (vni %d, port %d, local %s dev %s): %w", v.Name, v.VNI, v.Port, v.Local, v.Parent, err)
	}
	l, err := netlink.LinkByName(v.Name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", v.Name, err)
	}
	return setUp(l)
}

// vxlanUsing names a VXLAN device other than self that receives vni on
// port: one with that VNI, or one in external (collect-metadata) mode,
// which takes every VNI of its port.
func vxlanUsing(port, vni int, self string) string {
	ls, err := netlink.LinkList()
	if err != nil {
		return ""
	}
	for _, l := range ls {
		x, ok := l.(*netlink.Vxlan)
		if !ok || x.Name == self || x.Port != port {
			continue
		}
		if x.VxlanId == vni || x.FlowBased {
			return x.Name
		}
	}
	return ""
}

func setUp(l netlink.Link) error {
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

// Underlay is the interface and address a host talks to its peers over.
type Underlay struct {
	Interface string
	Address   netip.Addr
	Prefix    netip.Prefix // the address with its mask: the L2 segment's subnet
	MTU       int
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
		links, err := netlink.LinkList()
		if err != nil {
			return Underlay{}, fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
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
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
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
		return u, nil
	}
	return Underlay{}, fmt.Errorf("interface %s does not carry %s", l.Attrs().Name, ip)
}

// Sysctl sets a sysctl under root (the host's /proc/sys mounted into the
// plugin, or /proc/sys itself). A missing or read-only tree is reported.
func Sysctl(root, name, value string) error {
	path := filepath.Join(root, strings.ReplaceAll(name, ".", "/"))
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
