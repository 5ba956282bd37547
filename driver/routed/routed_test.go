package routed

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/errdefs"
)

// TestCheckPoolAgainstUnderlay: routed pools must stay off the underlay's
// subnet (macvlan pools are that subnet and never get here). Before the fix CreateNetwork
// had no such check and a vxlan pool over the LAN was accepted.
func TestCheckPoolAgainstUnderlay(t *testing.T) {
	u := kernel.Underlay{Interface: "eth0", Address: netip.MustParseAddr("192.168.1.10"), Prefix: netip.MustParsePrefix("192.168.1.0/24")}
	for _, c := range []struct {
		pool    string
		refused bool
	}{
		{"192.168.1.0/24", true},
		{"192.168.0.0/16", true}, // contains the underlay
		{"192.168.1.128/25", true},
		{"192.168.2.0/24", false},
		{"10.244.0.0/16", false},
	} {
		err := CheckPool(netip.MustParsePrefix(c.pool), u, "macvlan")
		if !c.refused {
			if err != nil {
				t.Errorf("%s: %v", c.pool, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: got %v, want a refusal", c.pool, err)
			continue
		}
		for _, w := range []string{c.pool, "underlay network 192.168.1.0/24 (on eth0)", "pick a subnet outside it"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %q does not say %q", c.pool, err, w)
			}
		}
	}
	// A host whose address is a /32 (some clouds) only loses that address.
	u.Prefix = netip.MustParsePrefix("192.168.1.10/32")
	if CheckPool(netip.MustParsePrefix("192.168.1.0/26"), u, "macvlan") == nil ||
		CheckPool(netip.MustParsePrefix("192.168.1.64/26"), u, "macvlan") != nil {
		t.Error("/32 underlay")
	}
}
