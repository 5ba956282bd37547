package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Macvlan modes, with Docker's names for them.
var macvlanModes = map[string]netlink.MacvlanMode{
	"bridge":   netlink.MACVLAN_MODE_BRIDGE,
	"private":  netlink.MACVLAN_MODE_PRIVATE,
	"vepa":     netlink.MACVLAN_MODE_VEPA,
	"passthru": netlink.MACVLAN_MODE_PASSTHRU,
}

// ValidMacvlanMode says whether name is a macvlan mode this package knows.
func ValidMacvlanMode(name string) bool {
	_, ok := macvlanModes[name]
	return ok
}

// ShimPrefix names the host-access shims (tartan.hostaccess): tm plus 11
// hex digits of the network ID.
const ShimPrefix = "tm"

// ShimName is the deterministic name of a network's host-access shim.
func ShimName(networkID string) string { return ShimPrefix + idPart(networkID) }

var vlanName = regexp.MustCompile(`^(.+)\.([0-9]{1,4})$`)

// ParseVLANParent splits a parent written as Docker's macvlan driver reads
// it: "eth0.100" is VLAN 100 on eth0. ok is false for any other name.
func ParseVLANParent(name string) (base string, vlan int, ok bool, err error) {
	m := vlanName.FindStringSubmatch(name)
	if m == nil {
		return "", 0, false, nil
	}
	vlan, _ = strconv.Atoi(m[2])
	if vlan < 1 || vlan > 4094 {
		return "", 0, false, fmt.Errorf("parent %s names VLAN %d: VLAN IDs go from 1 to 4094", name, vlan)
	}
	return m[1], vlan, true, nil
}

// Parent describes the interface a macvlan network hangs off.
type Parent struct {
	Name string
	MTU  int
	// Created is true when EnsureParent made the link (a VLAN
	// sub-interface) and DeleteParent should remove it with the network.
	Created bool
}

// EnsureParent finds the parent interface, creating an 802.1q link when the
// name is <interface>.<vlan> and only the base interface exists (as Docker's
// macvlan driver does). A VLAN link that exists already is used as it is.
func EnsureParent(name string) (Parent, error) {
	if l, err := netlink.LinkByName(name); err == nil {
		if l.Attrs().EncapType != "ether" {
			return Parent{}, fmt.Errorf("parent %s is not an Ethernet interface (%s): give -o parent= the host's physical interface", name, l.Attrs().EncapType)
		}
		return Parent{Name: name, MTU: l.Attrs().MTU}, nil
	} else if !notFound(err) {
		return Parent{}, fmt.Errorf("look up parent %s: %w", name, err)
	}
	base, vlan, ok, err := ParseVLANParent(name)
	if err != nil {
		return Parent{}, err
	}
	if !ok {
		return Parent{}, fmt.Errorf("parent interface %s does not exist on this host: give -o parent=<interface> naming one of its interfaces", name)
	}
	if len(name) > 15 {
		return Parent{}, fmt.Errorf("parent %s is longer than the kernel's 15-character interface names: use a shorter name", name)
	}
	bl, err := netlink.LinkByName(base)
	if notFound(err) {
		return Parent{}, fmt.Errorf("parent %s: its base interface %s does not exist on this host: give -o parent=<interface>.<vlan> with an interface of this host", name, base)
	}
	if err != nil {
		return Parent{}, fmt.Errorf("look up %s: %w", base, err)
	}
	v := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: bl.Attrs().Index}, VlanId: vlan}
	created := true
	if err := netlink.LinkAdd(v); errors.Is(err, unix.EEXIST) {
		created = false // made meanwhile by someone else: adopted as theirs
	} else if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) {
			return Parent{}, fmt.Errorf("parent %s needs an 802.1q VLAN link and this kernel has no 802.1q support: load it (modprobe 8021q) or use an untagged parent", name)
		}
		return Parent{}, fmt.Errorf("create VLAN link %s (VLAN %d on %s): %w", name, vlan, base, err)
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return Parent{}, fmt.Errorf("look up %s: %w", name, err)
	}
	if err := setUp(l); err != nil {
		if created {
			_ = netlink.LinkDel(l)
		}
		return Parent{}, err
	}
	return Parent{Name: name, MTU: l.Attrs().MTU, Created: created}, nil
}

// DeleteParent removes a VLAN link that EnsureParent created; anything else
// of that name is left alone.
func DeleteParent(name string) error {
	l, err := netlink.LinkByName(name)
	if notFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if l.Type() != "vlan" {
		return nil
	}
	if err := netlink.LinkDel(l); err != nil && !notFound(err) {
		return fmt.Errorf("delete VLAN link %s: %w", name, err)
	}
	return nil
}

// Macvlan describes a macvlan link.
type Macvlan struct {
	Name   string
	Parent string
	Mode   string // bridge, private, vepa or passthru
	MTU    int
	MAC    string // empty: the kernel picks one
}

// EnsureMacvlan creates the link, or adopts one of that name on the same
// parent in the same mode; a mismatched one is recreated.
func EnsureMacvlan(m Macvlan) (netlink.Link, error) {
	mode, ok := macvlanModes[m.Mode]
	if !ok {
		return nil, fmt.Errorf("macvlan %s: unknown mode %q", m.Name, m.Mode)
	}
	parent, err := netlink.LinkByName(m.Parent)
	if err != nil {
		return nil, fmt.Errorf("macvlan %s: parent %s: %w", m.Name, m.Parent, err)
	}
	var hw net.HardwareAddr
	if m.MAC != "" {
		if hw, err = net.ParseMAC(m.MAC); err != nil {
			return nil, fmt.Errorf("macvlan %s: mac address %q: %w", m.Name, m.MAC, err)
		}
	}
	if l, err := netlink.LinkByName(m.Name); err == nil {
		cur, ok := l.(*netlink.Macvlan)
		if ok && cur.ParentIndex == parent.Attrs().Index && cur.Mode == mode && (hw == nil || cur.HardwareAddr.String() == hw.String()) {
			if m.MTU > 0 && cur.MTU != m.MTU {
				if err := netlink.LinkSetMTU(l, m.MTU); err != nil {
					return nil, fmt.Errorf("macvlan %s: set mtu %d: %w", m.Name, m.MTU, err)
				}
			}
			return l, nil
		}
		if err := netlink.LinkDel(l); err != nil {
			return nil, fmt.Errorf("macvlan %s: replace mismatched link: %w", m.Name, err)
		}
	} else if !notFound(err) {
		return nil, fmt.Errorf("look up %s: %w", m.Name, err)
	}
	link := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: m.Name, MTU: m.MTU, ParentIndex: parent.Attrs().Index, HardwareAddr: hw}, Mode: mode}
	if err := netlink.LinkAdd(link); err != nil {
		if m.Mode == "passthru" && errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("macvlan %s: parent %s already has a passthru macvlan (passthru allows one container per parent): use macvlan_mode=bridge", m.Name, m.Parent)
		}
		return nil, fmt.Errorf("create macvlan %s on %s (mode %s): %w", m.Name, m.Parent, m.Mode, err)
	}
	l, err := netlink.LinkByName(m.Name)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", m.Name, err)
	}
	return l, nil
}

// EnsureShim makes the host-access shim: a bridge-mode macvlan on the parent
// carrying one address of the network (as a /32, so that it adds no route
// for the subnet), up. Routes to this host's containers go through it.
func EnsureShim(name, parent string, mtu int, mac string, ip netip.Addr) error {
	l, err := EnsureMacvlan(Macvlan{Name: name, Parent: parent, Mode: "bridge", MTU: mtu, MAC: mac})
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(ip, 32))}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("add %s to shim %s: %w", ip, name, err)
	}
	return setUp(l)
}
