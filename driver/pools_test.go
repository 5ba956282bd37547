package driver

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

// TestCheckPoolAgainstUnderlay: routed pools must stay off the underlay's
// subnet, macvlan pools are that subnet. Before the fix (M11) CreateNetwork
// had no such check and a vxlan pool over the LAN was accepted.
func TestCheckPoolAgainstUnderlay(t *testing.T) {
	u := kernel.Underlay{Interface: "eth0", Address: netip.MustParseAddr("192.168.1.10"), Prefix: netip.MustParsePrefix("192.168.1.0/24")}
	for _, c := range []struct {
		pool, backend string
		refused       bool
	}{
		{"192.168.1.0/24", BackendVXLAN, true},
		{"192.168.0.0/16", BackendVXLAN, true}, // contains the underlay
		{"192.168.1.128/25", BackendHostGW, true},
		{"192.168.2.0/24", BackendVXLAN, false},
		{"10.244.0.0/16", BackendHostGW, false},
		{"192.168.1.0/24", BackendMacvlan, false}, // the segment itself, by design
	} {
		err := checkPoolAgainstUnderlay(netip.MustParsePrefix(c.pool), c.backend, u)
		if !c.refused {
			if err != nil {
				t.Errorf("%s %s: %v", c.backend, c.pool, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, kv.ErrInvalid) {
			t.Errorf("%s %s: got %v, want a refusal", c.backend, c.pool, err)
			continue
		}
		for _, w := range []string{c.pool, "underlay network 192.168.1.0/24 (on eth0)", "pick a subnet outside it"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s %s: %q does not say %q", c.backend, c.pool, err, w)
			}
		}
	}
	// A host whose address is a /32 (some clouds) only loses that address.
	u.Prefix = netip.MustParsePrefix("192.168.1.10/32")
	if checkPoolAgainstUnderlay(netip.MustParsePrefix("192.168.1.0/26"), BackendVXLAN, u) == nil ||
		checkPoolAgainstUnderlay(netip.MustParsePrefix("192.168.1.64/26"), BackendVXLAN, u) != nil {
		t.Error("/32 underlay")
	}
}
