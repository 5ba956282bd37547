package firewall

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// setPrefix names every ipset of tartan's.
const setPrefix = "tartan-"

// ensureSets makes each set exist with its prefixes, before the rules that
// match it are restored. A set of that name already holds them (its name
// is its content's hash) unless changed by hand: then it is filled anew
// into a spare set swapped in at once, so that the rules never see it half
// full.
func ensureSets(sets []Set) error {
	for _, s := range sets {
		have, err := kernel.IpsetList(s.Name)
		if err == nil && sameEntries(have.Entries, s.Prefixes) {
			continue
		}
		if err != nil {
			if err := createSet(s.Name, s); err != nil {
				return err
			}
			continue
		}
		spare := s.Name[:min(len(s.Name), 26)] + "-new"
		_ = netlink.IpsetDestroy(spare)
		if err := createSet(spare, s); err != nil {
			return err
		}
		if err := netlink.IpsetSwap(spare, s.Name); err != nil {
			return fmt.Errorf("ipset swap %s %s: %w", spare, s.Name, err)
		}
		_ = netlink.IpsetDestroy(spare)
	}
	return nil
}

// createSet makes set name of type hash:net with s's prefixes.
func createSet(name string, s Set) error {
	family := uint8(unix.AF_INET)
	if s.V6 {
		family = unix.AF_INET6
	}
	if err := netlink.IpsetCreate(name, "hash:net", netlink.IpsetCreateOptions{Family: family, MaxElements: uint32(max(65536, 2*len(s.Prefixes)))}); err != nil {
		return fmt.Errorf("ipset create %s hash:net: %w (network policy needs the kernel's ip_set and xt_set)", name, err)
	}
	for _, p := range entries(s.Prefixes) {
		if err := netlink.IpsetAdd(name, &netlink.IPSetEntry{IP: net.IP(p.Addr().AsSlice()), CIDR: uint8(p.Bits())}); err != nil {
			_ = netlink.IpsetDestroy(name)
			return fmt.Errorf("ipset add %s %s: %w", name, p, err)
		}
	}
	return nil
}

// entries are the prefixes a hash:net set can hold: a /0 (which it
// cannot) as its two halves.
func entries(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		if p.Bits() == 0 {
			out = append(out, netip.PrefixFrom(p.Addr(), 1), netip.PrefixFrom(upper(p), 1))
			continue
		}
		out = append(out, p.Masked())
	}
	return out
}

// upper is the first address of a /0's upper half.
func upper(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	b[0] |= 0x80
	a, _ := netip.AddrFromSlice(b)
	return a
}

// sameEntries says whether a set holds exactly the prefixes.
func sameEntries(have []netlink.IPSetEntry, want []netip.Prefix) bool {
	w := entries(want)
	if len(have) != len(w) {
		return false
	}
	got := make([]netip.Prefix, 0, len(have))
	for _, e := range have {
		a, ok := netip.AddrFromSlice(e.IP)
		if !ok {
			return false
		}
		bits := int(e.CIDR)
		if bits == 0 { // a host entry is listed without its length
			bits = a.Unmap().BitLen()
		}
		got = append(got, netip.PrefixFrom(a.Unmap(), bits))
	}
	cmp := func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) }
	slices.SortFunc(got, cmp)
	slices.SortFunc(w, cmp)
	return slices.Equal(got, w)
}

// removeSets destroys tartan's sets that are not kept (no rule matches them
// any more: call after the restore). Without any set wanted, a kernel
// without ipset is not an error.
func removeSets(keep []Set) error {
	all, err := kernel.IpsetListAll()
	if err != nil {
		if len(keep) == 0 {
			return nil
		}
		return fmt.Errorf("ipset list: %w", err)
	}
	var errs []error
	for _, s := range all {
		if !strings.HasPrefix(s.SetName, setPrefix) || slices.ContainsFunc(keep, func(k Set) bool { return k.Name == s.SetName }) {
			continue
		}
		if err := netlink.IpsetDestroy(s.SetName); err != nil {
			errs = append(errs, fmt.Errorf("ipset destroy %s: %w", s.SetName, err))
		}
	}
	return errors.Join(errs...)
}
