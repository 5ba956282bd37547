package kernel

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestHostPrefixes: the routes that keep automatic pools away are the
// host's own, without the default route and without tartan's.
func TestHostPrefixes(t *testing.T) {
	cidr := func(s string) *net.IPNet {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	rs := []netlink.Route{
		{Dst: nil},                                            // default route (netlink gives no Dst)
		{Dst: cidr("0.0.0.0/0")},                              // default route written out
		{Dst: cidr("192.168.1.0/24")},                         // connected LAN
		{Dst: cidr("172.17.0.0/16")},                          // Docker's bridge
		{Dst: cidr("10.8.0.0/16")},                            // VPN, via a gateway
		{Dst: cidr("10.244.0.2/32"), Protocol: RouteProtocol}, // tartan's
	}
	got := hostPrefixes(rs)
	want := []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24"), netip.MustParsePrefix("172.17.0.0/16"), netip.MustParsePrefix("10.8.0.0/16")}
	if !slices.Equal(got, want) {
		t.Fatalf("host prefixes %v, want %v", got, want)
	}
}
