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

// MaxPoolBits is the longest pool prefix tartan accepts.
const MaxPoolBits = 30

// ParsePool validates a pool CIDR: IPv4, written as its network address, no
// longer than /30, clear of the ranges with a fixed meaning (CheckSpecial).
func ParsePool(what, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, errdefs.Invalid("%s %q is not a CIDR: write it like 10.244.0.0/16", what, s)
	}
	if !p.Addr().Is4() {
		return p, errdefs.Invalid("%s %s is not IPv4: tartan supports IPv4 pools only", what, s)
	}
	if p.Masked() != p {
		return p, errdefs.Invalid("%s %s has host bits set: use %s", what, s, p.Masked())
	}
	if p.Bits() > MaxPoolBits {
		return p, errdefs.Invalid("%s %s is too small: use a /%d or larger", what, s, MaxPoolBits)
	}
	return p, CheckSpecial(what, p)
}

// specialRange is an IPv4 range no pool may overlap, with the reason.
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
	}
}

// CheckSpecial refuses a pool that overlaps (contains, or lies in) a range
// with a fixed meaning. what names the flag the pool came from.
func CheckSpecial(what string, p netip.Prefix) error {
	for _, r := range specialRanges() {
		if p.Overlaps(r.prefix) {
			return errdefs.Invalid("%s %s overlaps %s (%s): pick a subnet outside it, such as one in 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
				what, p, r.prefix, r.why)
		}
	}
	return nil
}

// DefaultBlockBits picks a block size for an allocation range: /26 for large
// ranges, at least four blocks for small ones.
func DefaultBlockBits(r netip.Prefix) int {
	bits := max(26, r.Bits()+2)
	if bits > MaxPoolBits {
		bits = max(r.Bits(), MaxPoolBits)
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
	if blockBits < pool.Bits() || blockBits > 32 {
		return Layout{}, errdefs.Invalid("tartan.blocksize=%d does not fit pool %s: use a prefix length from %d to 32", blockBits, pool, pool.Bits())
	}
	return Layout{Pool: pool, Range: rng, BlockBits: blockBits}, nil
}

// Usable says whether a can be handed out at all: inside the pool and not its
// network or broadcast address.
func (l Layout) Usable(a netip.Addr) bool {
	if !l.Pool.Contains(a) {
		return false
	}
	if l.Pool.Bits() >= 31 {
		return true
	}
	return a != l.Pool.Addr() && a != lastAddr(l.Pool)
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
	if l.Pool.Bits() >= 31 {
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
	step := uint64(1) << (32 - l.BlockBits)
	count := uint64(1) << (l.BlockBits - l.Range.Bits())
	base := addrToUint(l.Range.Addr())
	for i := uint64(0); i < count; i++ {
		if !fn(netip.PrefixFrom(uintToAddr(uint32(base+i*step)), l.BlockBits)) {
			return
		}
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

func lastAddr(p netip.Prefix) netip.Addr {
	return uintToAddr(uint32(addrToUint(p.Addr()) | (uint64(1)<<(32-p.Bits()) - 1)))
}

func addrToUint(a netip.Addr) uint64 {
	b := a.As4()
	return uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
}

func uintToAddr(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}
