package driver

import (
	"net/netip"
	"testing"

	"github.com/tartan-net/tartan/driver/kernel"
)

// TestDenyLog: logged packets are counted per flow and direction, other
// prefixes ignored, and the least recent flow goes past MaxDeniedFlows.
func TestDenyLog(t *testing.T) {
	d := testDriver("a", nil)
	a, b := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.1.0.3")
	for range 3 {
		d.deny.add(kernel.Logged{Prefix: "tartan deny ingress tnb", Src: a, Dst: b, Proto: 6, Port: 8080})
	}
	d.deny.add(kernel.Logged{Prefix: "tartan deny egress tna", Src: a, Dst: b, Proto: 1})
	d.deny.add(kernel.Logged{Prefix: "someone else", Src: a, Dst: b, Proto: 6, Port: 1})
	flows, total := d.DeniedFlows()
	if len(flows) != 2 || total["ingress"] != 3 || total["egress"] != 1 {
		t.Fatalf("flows %+v, total %v", flows, total)
	}
	for _, f := range flows {
		if f.Direction == "ingress" && (f.Count != 3 || f.Proto != "tcp" || f.Port != 8080 || f.Interface != "tnb") || f.Direction == "egress" && (f.Count != 1 || f.Proto != "icmp") {
			t.Errorf("flow %+v", f)
		}
	}
	for i := range MaxDeniedFlows {
		d.deny.add(kernel.Logged{Prefix: "tartan deny ingress tnb", Src: netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), Dst: b, Proto: 17, Port: 53})
	}
	flows, _ = d.DeniedFlows()
	if len(flows) != MaxDeniedFlows {
		t.Fatalf("%d flows kept, want %d", len(flows), MaxDeniedFlows)
	}
	for _, f := range flows {
		if f.Src == a {
			t.Fatalf("the least recent flows were kept: %+v", f)
		}
	}
}
