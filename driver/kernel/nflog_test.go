package kernel

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestParseIP: the headers of a logged packet, IPv4 (with options) and
// IPv6, TCP and UDP ports, ICMP without one; short packets refused.
func TestParseIP(t *testing.T) {
	v4 := make([]byte, 24+4)
	v4[0] = 0x46 // IPv4, 24-byte header (one option word)
	v4[9] = unix.IPPROTO_TCP
	copy(v4[12:], []byte{10, 1, 0, 2})
	copy(v4[16:], []byte{10, 1, 0, 3})
	v4[24+2], v4[24+3] = 0x1f, 0x90 // 8080
	var l Logged
	if !parseIP(v4, &l) || l.Src != netip.MustParseAddr("10.1.0.2") || l.Dst != netip.MustParseAddr("10.1.0.3") || l.Proto != unix.IPPROTO_TCP || l.Port != 8080 {
		t.Fatalf("IPv4: %+v", l)
	}
	v6 := make([]byte, 40+4)
	v6[0] = 0x60
	v6[6] = unix.IPPROTO_UDP
	src, dst := netip.MustParseAddr("fd00::2").As16(), netip.MustParseAddr("fd00::3").As16()
	copy(v6[8:], src[:])
	copy(v6[24:], dst[:])
	v6[40+3] = 53
	l = Logged{}
	if !parseIP(v6, &l) || l.Dst != netip.MustParseAddr("fd00::3") || l.Proto != unix.IPPROTO_UDP || l.Port != 53 {
		t.Fatalf("IPv6: %+v", l)
	}
	icmp := make([]byte, 28)
	icmp[0], icmp[9] = 0x45, unix.IPPROTO_ICMP
	l = Logged{}
	if !parseIP(icmp, &l) || l.Port != 0 || l.Proto != unix.IPPROTO_ICMP {
		t.Fatalf("ICMP: %+v", l)
	}
	for _, bad := range [][]byte{nil, {0x45, 0}, make([]byte, 30)} {
		if parseIP(bad, &Logged{}) {
			t.Errorf("%x parsed", bad)
		}
	}
}
