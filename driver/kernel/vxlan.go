package kernel

import (
	"crypto/sha256"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// The VXLAN device of a vxlan network (driver/vxlan) and the MACs that
// name each host's end of it.

// VXLANName is the name of a network's VXLAN device.
func VXLANName(vni int) string { return fmt.Sprintf("%s%d", VXLANPrefix, vni) }

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
// that does not match is recreated, and recreated says why (flannel's
// vxlanLinksIncompat).
func EnsureVXLAN(v VXLAN) (recreated string, err error) {
	parent, err := netlink.LinkByName(v.Parent)
	if err != nil {
		return "", fmt.Errorf("vxlan %s: underlay interface %s: %w", v.Name, v.Parent, err)
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
		recreated = vxlanIncompat(l, want)
		if recreated == "" {
			if l.Attrs().MTU != v.MTU {
				if err := netlink.LinkSetMTU(l, v.MTU); err != nil {
					return "", fmt.Errorf("vxlan %s: set mtu %d: %w", v.Name, v.MTU, err)
				}
			}
			if v.MAC != nil && l.Attrs().HardwareAddr.String() != v.MAC.String() {
				if err := netlink.LinkSetHardwareAddr(l, v.MAC); err != nil {
					return "", fmt.Errorf("vxlan %s: set mac %s: %w", v.Name, v.MAC, err)
				}
			}
			return "", setUp(l)
		}
		if err := netlink.LinkDel(l); err != nil {
			return recreated, fmt.Errorf("vxlan %s: replace mismatched device (%s): %w", v.Name, recreated, err)
		}
	} else if !notFound(err) {
		return "", fmt.Errorf("look up %s: %w", v.Name, err)
	}
	if err := netlink.LinkAdd(want); err != nil {
		if other := vxlanUsing(v.Port, v.VNI, v.Name); other != "" {
			return recreated, fmt.Errorf("create vxlan %s: %w: the VXLAN device %s of another program already receives VNI %d on UDP port %d on this host "+
				"(flannel uses VNI 1 on port 8472, Cilium every VNI on 8472): set VXLAN_PORT to a free port on every host, or give the network another -o tartan.vni",
				v.Name, err, other, v.VNI, v.Port)
		}
		return recreated, fmt.Errorf("create vxlan %s (vni %d, port %d, local %s dev %s): %w", v.Name, v.VNI, v.Port, v.Local, v.Parent, err)
	}
	l, err := netlink.LinkByName(v.Name)
	if err != nil {
		return recreated, fmt.Errorf("look up %s: %w", v.Name, err)
	}
	return recreated, setUp(l)
}

// vxlanIncompat says how an existing link differs from the device wanted,
// or "" when it can be adopted (MTU and MAC are set in place).
func vxlanIncompat(l netlink.Link, want *netlink.Vxlan) string {
	cur, ok := l.(*netlink.Vxlan)
	switch {
	case !ok:
		return fmt.Sprintf("a %s link, not vxlan", l.Type())
	case cur.VxlanId != want.VxlanId:
		return fmt.Sprintf("VNI %d, not %d", cur.VxlanId, want.VxlanId)
	case cur.Port != want.Port:
		return fmt.Sprintf("UDP port %d, not %d", cur.Port, want.Port)
	case cur.VtepDevIndex != want.VtepDevIndex:
		return fmt.Sprintf("underlay interface index %d, not %d", cur.VtepDevIndex, want.VtepDevIndex)
	case !net.IP(want.SrcAddr).Equal(cur.SrcAddr):
		return fmt.Sprintf("local address %s, not %s", net.IP(cur.SrcAddr), net.IP(want.SrcAddr))
	case cur.Learning:
		return "address learning on"
	}
	return ""
}

// vxlanUsing names a VXLAN device other than self that receives vni on
// port: one with that VNI, or one in external (collect-metadata) mode,
// which takes every VNI of its port.
func vxlanUsing(port, vni int, self string) string {
	ls, err := linkList()
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

// VTEPMAC is the MAC of a host's VXLAN device for a VNI, derived from the
// host's ID so that it survives restarts and every peer can compute it.
func VTEPMAC(host string, vni int) net.HardwareAddr {
	return StableMAC(fmt.Sprintf("tartan-vtep/%s/%d", host, vni))
}

// StableMAC derives a locally administered unicast MAC from seed.
func StableMAC(seed string) net.HardwareAddr {
	sum := sha256.Sum256([]byte(seed))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = (mac[0] | 0x02) & 0xfe // locally administered, unicast
	return mac
}

// LinkLocalOf is the IPv6 link-local address a MAC address gives an
// interface by EUI-64 (RFC 4291): a peer VTEP's, which dual-stack routes
// take as their next hop (an IPv6 route cannot have an IPv4 one). An
// unreadable MAC gives the invalid address.
func LinkLocalOf(mac string) netip.Addr {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return netip.Addr{}
	}
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15] = hw[0]^0x02, hw[1], hw[2], 0xff, 0xfe, hw[3], hw[4], hw[5]
	return netip.AddrFrom16(b)
}
