package ipam

import (
	"net/netip"

	"github.com/tartan-net/tartan/errdefs"
)

// Layout is the pure description of a pool that allocation works on: the
// pool, the part addresses are handed out from (the whole pool or
// --ip-range) and the block size. Nothing here does I/O.
type Layout struct {
	Pool      netip.Prefix
	Range     netip.Prefix
	BlockBits int
}

// MaxPoolBits is the longest IPv4 pool prefix tartan accepts;
// MaxPoolBits6 the longest IPv6 one.
const (
	MaxPoolBits  = 30
	MaxPoolBits6 = 120
)

// maxPoolBits is the longest pool prefix of p's family.
func maxPoolBits(p netip.Prefix) int {
	if p.Addr().Is4() {
		return MaxPoolBits
	}
	return MaxPoolBits6
}

// ParsePool validates a pool CIDR: IPv4 or IPv6, written as its network
// address, no longer than /30 (IPv6: /120), clear of the ranges with a
// fixed meaning (CheckSpecial).
func ParsePool(what, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, errdefs.Invalid("%s %q is not a CIDR: write it like 10.244.0.0/16 (IPv6: fd00:10::/64)", what, s)
	}
	if p.Addr().Is4In6() {
		return p, errdefs.Invalid("%s %s is an IPv4-mapped IPv6 prefix: write the IPv4 subnet itself", what, s)
	}
	if p.Masked() != p {
		return p, errdefs.Invalid("%s %s has host bits set: use %s", what, s, p.Masked())
	}
	if p.Bits() > maxPoolBits(p) {
		return p, errdefs.Invalid("%s %s is too small: use a /%d or larger", what, s, maxPoolBits(p))
	}
	return p, CheckSpecial(what, p)
}

// specialRange is a range no pool may overlap, with the reason.
type specialRange struct {
	prefix netip.Prefix
	why    string
}

// specialRanges are the ranges whose addresses the kernel will not route to
// or from containers (martians), or that tartan itself uses. A pool that
// touches one breaks more than its own network: 0.0.0.0/0 would put
// "-s 0.0.0.0/0 -j ACCEPT" in FORWARD and route everything into the overlay.
func specialRanges() []specialRange {
	return []specialRange{
		{netip.MustParsePrefix("0.0.0.0/8"), `"this network", never routed`},
		{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
		{netip.MustParsePrefix("169.254.0.0/16"), "link-local, where tartan puts its containers' gateways"},
		{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
		{netip.MustParsePrefix("240.0.0.0/4"), "reserved, with the broadcast address 255.255.255.255"},
		{netip.MustParsePrefix("::/8"), "reserved: the unspecified and loopback addresses, IPv4-mapped addresses"},
		{netip.MustParsePrefix("fe80::/10"), "link-local, where tartan puts its containers' IPv6 gateways"},
		{netip.MustParsePrefix("ff00::/8"), "multicast"},
	}
}

// CheckSpecial refuses a pool that overlaps (contains, or lies in) a range
// with a fixed meaning. what names the flag the pool came from.
func CheckSpecial(what string, p netip.Prefix) error {
	for _, r := range specialRanges() {
		if p.Overlaps(r.prefix) {
			if p.Addr().Is6() {
				return errdefs.Invalid("%s %s overlaps %s (%s): pick a subnet outside it, such as a unique local one in fd00::/8", what, p, r.prefix, r.why)
			}
			return errdefs.Invalid("%s %s overlaps %s (%s): pick a subnet outside it, such as one in 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
				what, p, r.prefix, r.why)
		}
	}
	return nil
}

// DefaultBlockBits picks a block size for an allocation range: /26 for
// large IPv4 ranges (IPv6: /112), at least four blocks for small ones.
func DefaultBlockBits(r netip.Prefix) int {
	least, most := 26, MaxPoolBits
	if r.Addr().Is6() {
		least, most = 112, MaxPoolBits6
	}
	bits := max(least, r.Bits()+2)
	if bits > most {
		bits = max(r.Bits(), most)
	}
	return bits
}

// NewLayout validates and builds a layout. rng may be the zero Prefix
// (whole pool); blockBits 0 picks the default.
func NewLayout(pool, rng netip.Prefix, blockBits int) (Layout, error) {
	if !rng.IsValid() {
		rng = pool
	}
	if !pool.Contains(rng.Addr()) || rng.Bits() < pool.Bits() {
		return Layout{}, errdefs.Invalid("--ip-range %s is not inside --subnet %s: pick a range within the subnet", rng, pool)
	}
	if blockBits == 0 {
		blockBits = DefaultBlockBits(rng)
	}
	if top := pool.Addr().BitLen(); blockBits < pool.Bits() || blockBits > top {
		opt := OptBlockSize
		if top == 128 {
			opt = OptBlockSize6
		}
		return Layout{}, errdefs.Invalid("%s=%d does not fit pool %s: use a prefix length from %d to %d", opt, blockBits, pool, pool.Bits(), top)
	}
	return Layout{Pool: pool, Range: rng, BlockBits: blockBits}, nil
}

// Usable says whether a can be handed out at all: inside the pool and not its
// network or broadcast address (IPv6: not its subnet-router anycast
// address; it has no broadcast).
func (l Layout) Usable(a netip.Addr) bool {
	if !l.Pool.Contains(a) {
		return false
	}
	if l.Pool.Bits() >= a.BitLen()-1 {
		return true
	}
	return a != l.Pool.Addr() && (a.Is6() || a != lastAddr(l.Pool))
}

// Allocatable says whether a can be chosen automatically (also in the range).
func (l Layout) Allocatable(a netip.Addr) bool { return l.Usable(a) && l.Range.Contains(a) }

// BlockOf returns the block that contains a.
func (l Layout) BlockOf(a netip.Addr) netip.Prefix {
	p, _ := a.Prefix(l.BlockBits)
	return p
}

// FirstUsable is the default gateway: the first usable address of the pool.
func (l Layout) FirstUsable() netip.Addr {
	if l.Pool.Bits() >= l.Pool.Addr().BitLen()-1 {
		return l.Pool.Addr()
	}
	return l.Pool.Addr().Next()
}

// Blocks calls fn for each block that overlaps the allocation range, in
// order, until fn returns false.
func (l Layout) Blocks(fn func(netip.Prefix) bool) {
	if l.BlockBits <= l.Range.Bits() {
		fn(l.BlockOf(l.Range.Addr()))
		return
	}
	for b := l.BlockOf(l.Range.Addr()); fn(b); {
		next := lastAddr(b).Next()
		if !next.IsValid() || !l.Range.Contains(next) {
			return
		}
		b = netip.PrefixFrom(next, l.BlockBits)
	}
}

// FreeBlock returns the first block of the range that is not claimed.
func (l Layout) FreeBlock(claimed map[netip.Prefix]bool) (netip.Prefix, bool) {
	var out netip.Prefix
	found := false
	l.Blocks(func(b netip.Prefix) bool {
		if !claimed[b] && l.hasAllocatable(b) {
			out, found = b, true
			return false
		}
		return true
	})
	return out, found
}

func (l Layout) hasAllocatable(b netip.Prefix) bool {
	ok := false
	l.addrs(b, func(a netip.Addr) bool {
		ok = true
		return false
	})
	return ok
}

// addrs calls fn for every allocatable address of prefix p in order.
func (l Layout) addrs(p netip.Prefix, fn func(netip.Addr) bool) {
	for a := p.Addr(); p.Contains(a); a = a.Next() {
		if l.Allocatable(a) && !fn(a) {
			return
		}
		if !a.Next().IsValid() {
			return
		}
	}
}

// FreeIn returns the first allocatable address of block that is not used.
func (l Layout) FreeIn(block netip.Prefix, used map[netip.Addr]bool) (netip.Addr, bool) {
	var out netip.Addr
	l.addrs(block, func(a netip.Addr) bool {
		if !used[a] {
			out = a
			return false
		}
		return true
	})
	return out, out.IsValid()
}

// Capacity is the number of allocatable addresses.
func (l Layout) Capacity() int {
	n := 0
	l.addrs(l.Range, func(netip.Addr) bool { n++; return true })
	return n
}

// lastAddr is the last address of p (its host bits all ones).
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr()
	b := a.As16()
	off := 128 - a.BitLen() // an IPv4 address sits in the last 4 bytes
	for i := off + p.Bits(); i < 128; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	out := netip.AddrFrom16(b)
	if a.Is4() {
		return out.Unmap()
	}
	return out
}
