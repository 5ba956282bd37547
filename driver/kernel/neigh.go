package kernel

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Neigh is a permanent neighbour entry: the peer's underlay address (the next
// hop of its routes) resolves to its VTEP MAC on the VXLAN device.
type Neigh struct {
	Link string
	IP   netip.Addr
	MAC  string
}

// FDB sends frames for a peer's VTEP MAC to its underlay address.
type FDB struct {
	Link string
	MAC  string
	Dst  netip.Addr
}

func linkIndex(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("look up %s: %w", name, err)
	}
	return l.Attrs().Index, nil
}

// ReplaceNeigh installs or updates a permanent neighbour entry.
func ReplaceNeigh(n Neigh) error {
	idx, err := linkIndex(n.Link)
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(n.MAC)
	if err != nil {
		return fmt.Errorf("neighbour %s: %w", n.IP, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: family(n.IP), State: netlink.NUD_PERMANENT,
		IP: n.IP.AsSlice(), HardwareAddr: mac}); err != nil {
		return fmt.Errorf("neighbour %s lladdr %s dev %s: %w", n.IP, n.MAC, n.Link, err)
	}
	return nil
}

// family is the netlink address family of an address.
func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// Neighs lists the permanent neighbour entries of a link, IPv4 and IPv6.
func Neighs(link string) ([]Neigh, error) {
	idx, err := linkIndex(link)
	if err != nil {
		return nil, err
	}
	var out []Neigh
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		ns, err := neighList(idx, fam)
		if err != nil {
			return nil, fmt.Errorf("list neighbours of %s: %w", link, err)
		}
		for _, n := range ns {
			if n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			out = append(out, Neigh{Link: link, IP: addrOf(n.IP), MAC: n.HardwareAddr.String()})
		}
	}
	return out, nil
}

// DeleteNeigh removes a neighbour entry; a missing one is fine.
func DeleteNeigh(n Neigh) error {
	idx, err := linkIndex(n.Link)
	if notFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := netlink.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: family(n.IP), IP: n.IP.AsSlice()}); err != nil && !notFound(err) {
		return fmt.Errorf("delete neighbour %s dev %s: %w", n.IP, n.Link, err)
	}
	return nil
}

// ReplaceFDB installs or updates a forwarding entry on a VXLAN device.
func ReplaceFDB(f FDB) error {
	idx, err := linkIndex(f.Link)
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(f.MAC)
	if err != nil {
		return fmt.Errorf("fdb %s: %w", f.MAC, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: f.Dst.AsSlice(), HardwareAddr: mac}); err != nil {
		return fmt.Errorf("fdb %s dst %s dev %s: %w", f.MAC, f.Dst, f.Link, err)
	}
	return nil
}

// FDBs lists the forwarding entries with a destination on a VXLAN device.
func FDBs(link string) ([]FDB, error) {
	idx, err := linkIndex(link)
	if err != nil {
		return nil, err
	}
	ns, err := neighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("list fdb of %s: %w", link, err)
	}
	var out []FDB
	for _, n := range ns {
		dst, ok := netip.AddrFromSlice(n.IP.To4())
		if !ok || n.IP == nil {
			continue
		}
		out = append(out, FDB{Link: link, MAC: n.HardwareAddr.String(), Dst: dst})
	}
	return out, nil
}

// DeleteFDB removes a forwarding entry; a missing one is fine.
func DeleteFDB(f FDB) error {
	idx, err := linkIndex(f.Link)
	if notFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	mac, err := net.ParseMAC(f.MAC)
	if err != nil {
		return err
	}
	if err := netlink.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		IP: f.Dst.AsSlice(), HardwareAddr: mac}); err != nil && !notFound(err) {
		return fmt.Errorf("delete fdb %s dst %s dev %s: %w", f.MAC, f.Dst, f.Link, err)
	}
	return nil
}
