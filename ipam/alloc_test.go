package ipam

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/errdefs"
)

func TestDefaultBlockBits(t *testing.T) {
	for _, c := range []struct {
		pool string
		want int
	}{{"10.0.0.0/8", 26}, {"10.0.0.0/16", 26}, {"10.0.0.0/24", 26}, {"10.0.0.0/25", 27}, {"10.0.0.0/28", 30}, {"10.0.0.0/30", 30},
		{"fd00::/48", 112}, {"fd00::/64", 112}, {"fd00::/112", 114}, {"fd00::/116", 118}, {"fd00::/119", 120}, {"fd00::/120", 120}} {
		if got := DefaultBlockBits(netip.MustParsePrefix(c.pool)); got != c.want {
			t.Errorf("%s: %d, want %d", c.pool, got, c.want)
		}
	}
}

func TestLayoutRange(t *testing.T) {
	l, err := NewLayout(netip.MustParsePrefix("10.1.0.0/16"), netip.MustParsePrefix("10.1.5.0/24"), 0)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := l.FreeBlock(map[netip.Prefix]bool{})
	if !ok || b.String() != "10.1.5.0/26" {
		t.Fatalf("first block %s", b)
	}
	if l.Capacity() != 256 {
		t.Fatalf("capacity %d", l.Capacity())
	}
	if l.Allocatable(netip.MustParseAddr("10.1.6.1")) || !l.Usable(netip.MustParseAddr("10.1.6.1")) {
		t.Fatal("range not honoured")
	}
}

// FuzzLayout checks the allocator's invariants on arbitrary pools: whatever
// it hands out is allocatable, inside the block asked for, and unused.
func FuzzLayout(f *testing.F) {
	f.Add(uint32(0x0af40000), uint8(16), uint8(26), uint8(0), uint16(3))
	f.Add(uint32(0x0a000000), uint8(30), uint8(30), uint8(0), uint16(0))
	f.Add(uint32(0xc0a80000), uint8(24), uint8(28), uint8(26), uint16(70))
	f.Fuzz(func(t *testing.T, base uint32, bits, blockBits, rangeBits uint8, used uint16) {
		bits = 8 + bits%23 // 8..30
		pool := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(base >> 24), byte(base >> 16), byte(base >> 8), byte(base)}), int(bits)).Masked()
		var rng netip.Prefix
		if rangeBits != 0 {
			rng = netip.PrefixFrom(pool.Addr(), int(bits)+int(rangeBits)%(31-int(bits))).Masked()
		}
		l, err := NewLayout(pool, rng, int(blockBits%33))
		if err != nil {
			return
		}
		inUse := map[netip.Addr]bool{}
		a := l.Range.Addr()
		for i := 0; i < int(used)%300 && l.Range.Contains(a); i++ {
			inUse[a] = true
			a = a.Next()
		}
		b, ok := l.FreeBlock(map[netip.Prefix]bool{})
		if !ok {
			t.Fatalf("no free block in an empty layout %+v", l)
		}
		if got, ok := l.FreeIn(b, inUse); ok {
			if !b.Contains(got) || !l.Allocatable(got) || inUse[got] {
				t.Fatalf("FreeIn(%s) = %s: outside, unallocatable or used (%+v)", b, got, l)
			}
		}
		if l.Allocatable(l.Pool.Addr()) && l.Pool.Bits() < 31 {
			t.Fatalf("network address allocatable in %+v", l)
		}
	})
}

// TestParsePoolSpecialRanges: pools that touch a range with a fixed meaning
// are refused with one line naming the range and the fix. Before the fix
// ParsePool accepted all of them (M11: 0.0.0.0/0 turned FORWARD into
// accept-all, 169.254.0.0/16 handed out tartan's own gateway 169.254.1.1).
func TestParsePoolSpecialRanges(t *testing.T) {
	for _, c := range []struct{ pool, rng string }{
		{"0.0.0.0/0", "0.0.0.0/8"},
		{"0.0.0.0/8", "0.0.0.0/8"},
		{"0.0.0.0/16", "0.0.0.0/8"},
		{"0.0.0.0/1", "0.0.0.0/8"},
		{"127.0.0.0/24", "127.0.0.0/8"},
		{"126.0.0.0/7", "127.0.0.0/8"}, // contains loopback
		{"169.254.0.0/16", "169.254.0.0/16"},
		{"169.254.1.0/24", "169.254.0.0/16"},
		{"169.0.0.0/8", "169.254.0.0/16"},
		{"224.0.0.0/24", "224.0.0.0/4"},
		{"239.255.0.0/16", "224.0.0.0/4"},
		{"192.0.0.0/2", "224.0.0.0/4"},
		{"240.0.0.0/4", "240.0.0.0/4"},
		{"255.255.255.252/30", "240.0.0.0/4"}, // holds 255.255.255.255
		{"128.0.0.0/1", "169.254.0.0/16"},
	} {
		_, err := ParsePool("--subnet", c.pool)
		if err == nil || !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: got %v, want an invalid-request error", c.pool, err)
			continue
		}
		msg := err.Error()
		for _, w := range []string{"--subnet " + c.pool, "overlaps " + c.rng, "pick a subnet outside it"} {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q does not say %q", c.pool, msg, w)
			}
		}
		if strings.Contains(msg, "\n") {
			t.Errorf("%s: message is not one line: %q", c.pool, msg)
		}
	}
	if _, err := ParsePool("--ip-range", "169.254.7.0/24"); err == nil || !strings.Contains(err.Error(), "--ip-range 169.254.7.0/24 overlaps 169.254.0.0/16") {
		t.Errorf("--ip-range: %v", err)
	}
	for _, ok := range []string{"10.0.0.0/8", "1.0.0.0/8", "126.0.0.0/8", "128.0.0.0/3", "169.253.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "223.255.255.0/24"} {
		if _, err := ParsePool("--subnet", ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

// TestLayout6: IPv6 pools have blocks and addresses as IPv4 ones do, with
// no broadcast address and the subnet-router anycast address left out.
func TestLayout6(t *testing.T) {
	l, err := NewLayout(netip.MustParsePrefix("fd00:10::/64"), netip.Prefix{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := l.FreeBlock(map[netip.Prefix]bool{})
	if !ok || b.String() != "fd00:10::/112" {
		t.Fatalf("first block %s", b)
	}
	b2, ok := l.FreeBlock(map[netip.Prefix]bool{b: true})
	if !ok || b2.String() != "fd00:10::1:0/112" {
		t.Fatalf("second block %s", b2)
	}
	if l.Usable(netip.MustParseAddr("fd00:10::")) || !l.Usable(netip.MustParseAddr("fd00:10::ffff:ffff:ffff:ffff")) {
		t.Fatal("IPv6: the anycast address is usable, or the last address is not")
	}
	if got, ok := l.FreeIn(b, map[netip.Addr]bool{netip.MustParseAddr("fd00:10::1"): true}); !ok || got.String() != "fd00:10::2" {
		t.Fatalf("FreeIn: %s", got)
	}
	if l.FirstUsable().String() != "fd00:10::1" {
		t.Fatalf("first usable %s", l.FirstUsable())
	}
	// The last block of a range ends the walk.
	small, err := NewLayout(netip.MustParsePrefix("fd00:10::/116"), netip.Prefix{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	small.Blocks(func(p netip.Prefix) bool { blocks = append(blocks, p.String()); return true })
	if strings.Join(blocks, " ") != "fd00:10::/118 fd00:10::400/118 fd00:10::800/118 fd00:10::c00/118" {
		t.Fatalf("blocks of a /116: %v", blocks)
	}
	if lastAddr(netip.MustParsePrefix("10.1.0.0/16")).String() != "10.1.255.255" || lastAddr(netip.MustParsePrefix("fd00::/120")).String() != "fd00::ff" {
		t.Fatal("lastAddr")
	}
	for _, c := range []struct{ pool, want string }{
		{"fe80::/64", "link-local"}, {"ff02::/64", "multicast"}, {"::/0", "reserved"}, {"::ffff:10.0.0.0/104", "IPv4-mapped"},
		{"fd00::/121", "too small"}, {"fd00::1/64", "host bits"},
	} {
		if _, err := ParsePool("--subnet", c.pool); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.pool, err, c.want)
		}
	}
	if _, err := NewLayout(netip.MustParsePrefix("fd00::/64"), netip.Prefix{}, 26); err == nil || !strings.Contains(err.Error(), "tartan.blocksize6=26") {
		t.Fatalf("a /26 block in an IPv6 pool: %v", err)
	}
}
