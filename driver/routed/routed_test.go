package routed

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/backend"
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

// TestRoutedEndpoint: each network of a host gets its own link-local
// gateway; the container routes through it (a connected route to it, the
// pool and, unless internal, the default route via it); the firewall sees
// the pool; the MTU leaves room for the backend's encapsulation.
func TestRoutedEndpoint(t *testing.T) {
	others := []backend.Network{{Gateway: "169.254.1.1"}, {Gateway: "169.254.1.3"}}
	if gw := NextGateway(others); gw.String() != "169.254.1.2" {
		t.Fatalf("gateway %s", gw)
	}
	n := backend.Network{ID: "n", Pool: "10.244.0.0/16", Gateway: "169.254.1.2", Device: "tartan.7"}
	e := backend.Endpoint{IP: "10.244.0.5", HostIf: "tnx", PeerIf: "tpx"}
	j := Base{}.Join(n, e)
	if j.Interface != "tpx" || j.Gateway.String() != "169.254.1.2" || len(j.Routes) != 2 ||
		j.Routes[0].Dst.String() != "169.254.1.2/32" || j.Routes[0].NextHop.IsValid() ||
		j.Routes[1].Dst.String() != "10.244.0.0/16" || j.Routes[1].NextHop.String() != "169.254.1.2" {
		t.Fatalf("join %+v", j)
	}
	n.Internal = true
	if j := (Base{}).Join(n, e); j.Gateway.IsValid() {
		t.Fatalf("an internal network's container got a default gateway: %+v", j)
	}
	if p, ok := (Base{}).Firewall(n); !ok || p.Pool.String() != "10.244.0.0/16" || !p.Internal || p.Device != "tartan.7" {
		t.Fatalf("firewall %+v", p)
	}
	u := kernel.Underlay{Interface: "eth0", MTU: 9000}
	if mtu, err := MTU(u, 50, 0); mtu != 8950 || err != nil {
		t.Fatalf("mtu %d %v", mtu, err)
	}
	if _, err := MTU(u, 50, 8960); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("an MTU over the limit: %v", err)
	}
}

// TestNextGateways: each routed network of a host gets its own link-local
// gateway of each family, the first one no other network uses.
func TestNextGateways(t *testing.T) {
	others := []backend.Network{{Gateway: "169.254.1.1", Gateway6: "fe80::1"}, {Gateway: "169.254.1.2"}}
	if gw := NextGateway(others); gw.String() != "169.254.1.3" {
		t.Fatalf("IPv4 gateway %s", gw)
	}
	if gw := NextGateway6(others); gw.String() != "fe80::2" {
		t.Fatalf("IPv6 gateway %s", gw)
	}
	if gw := NextGateway6(nil); gw != FirstGateway6 {
		t.Fatalf("first IPv6 gateway %s", gw)
	}
}
