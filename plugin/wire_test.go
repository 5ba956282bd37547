package plugin

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/ipam"
)

// TestParsePorts: Docker's port map becomes the driver's ports; what tartan
// cannot publish is refused with the fix.
func TestParsePorts(t *testing.T) {
	pm := func(b ...map[string]any) map[string]any { return map[string]any{dockerPortMap: b} }
	got, err := parsePorts(pm(map[string]any{"Proto": 6, "IP": "10.244.0.2", "Port": 8080, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080},
		map[string]any{"Proto": 17, "Port": 53, "HostIP": "0.0.0.0", "HostPort": 5353},
		map[string]any{"Proto": 132, "Port": 9, "HostIP": "10.1.2.3", "HostPort": 9}))
	want := []driver.PortRequest{{Proto: "tcp", HostPort: 18080, HostPortEnd: 18080, Port: 8080}, {Proto: "udp", HostPort: 5353, HostPortEnd: 5353, Port: 53}, {Proto: "sctp", HostIP: "10.1.2.3", HostPort: 9, HostPortEnd: 9, Port: 9}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %v %v, want %v", got, err, want)
	}
	if got, err := parsePorts(nil); got != nil || err != nil {
		t.Fatalf("no port map: %v %v", got, err)
	}
	// -P and -p 80 send no host port, -p 8000-8010:80 a range: the driver picks.
	got, err = parsePorts(pm(map[string]any{"Proto": 6, "Port": 80}, map[string]any{"Proto": 17, "Port": 53, "HostPort": 8000, "HostPortEnd": 8010}))
	want = []driver.PortRequest{{Proto: "tcp", Port: 80}, {Proto: "udp", Port: 53, HostPort: 8000, HostPortEnd: 8010}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("any port: got %v %v, want %v", got, err, want)
	}
	for _, c := range []struct {
		opts map[string]any
		want string
	}{
		{pm(map[string]any{"Proto": 6, "Port": 80, "HostPort": 90, "HostPortEnd": 80}), "ends before it starts"},
		{pm(map[string]any{"Proto": 6, "Port": 80, "HostPortEnd": 80}), "LOW at least 1"},
		{pm(map[string]any{"Proto": 6, "Port": 0, "HostPort": 80}), "out of range"},
		{pm(map[string]any{"Proto": 1, "Port": 80, "HostPort": 80}), "tartan publishes tcp, udp and sctp"},
		{pm(map[string]any{"Proto": 6, "Port": 80, "HostPort": 70000}), "out of range"},
		{pm(map[string]any{"Proto": 6, "Port": 80, "HostPort": 80, "HostIP": "::1"}), "use an IPv4 address of this host"},
		{map[string]any{dockerPortMap: "nonsense"}, "unexpected form"},
	} {
		if _, err := parsePorts(c.opts); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.opts, err, c.want)
		}
	}
}

// TestWireRequests: the wire's network and endpoint requests become the
// driver's, and the ones that cannot are refused.
func TestWireRequests(t *testing.T) {
	req, err := networkRequest(&network.CreateNetworkRequest{NetworkID: "n", IPv4Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "10.1.0.0/16", Gateway: "10.1.0.1/16"}}})
	if err != nil || req.Pool != netip.MustParsePrefix("10.1.0.0/16") || req.Gateway != netip.MustParsePrefix("10.1.0.1/16") || req.Space != ipam.LocalSpace || req.ID != "n" {
		t.Fatalf("network: %+v %v", req, err)
	}
	dual, err := networkRequest(&network.CreateNetworkRequest{NetworkID: "n", IPv4Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "10.1.0.0/16"}},
		IPv6Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "fd00:1::/64", Gateway: "fd00:1::1/64"}}})
	if err != nil || dual.Pool6 != netip.MustParsePrefix("fd00:1::/64") || dual.Gateway6 != netip.MustParsePrefix("fd00:1::1/64") {
		t.Fatalf("dual-stack network: %+v %v", dual, err)
	}
	if _, err := networkRequest(&network.CreateNetworkRequest{IPv6Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "fd00::/64"}}}); err == nil || !strings.Contains(err.Error(), "IPv6-only networks are not supported") {
		t.Fatalf("IPv6-only network: %v", err)
	}
	for _, bad := range []*network.CreateNetworkRequest{
		{IPv4Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "10.1.0.0/16"}}, IPv6Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "10.2.0.0/16"}}},
		{IPv4Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "10.1.0.0/16"}}, IPv6Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "fd00::/64"}, {AddressSpace: ipam.LocalSpace, Pool: "fd01::/64"}}},
		{IPv4Data: []*network.IPAMData{{AddressSpace: "default", Pool: "10.1.0.0/16"}}},
		{IPv4Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "10.1.0.0/16"}}, IPv6Data: []*network.IPAMData{{Pool: "fd00::/64"}}},
		{IPv4Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "nope"}}},
		{IPv4Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: "10.1.0.0/16", Gateway: "10.1.0.1"}}},
		{},
	} {
		if _, err := networkRequest(bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
	alloc, err := allocateRequest(&network.AllocateNetworkRequest{NetworkID: "n", IPv4Data: []network.IPAMData{{Pool: "10.2.0.0/16"}}})
	if err != nil || alloc.Pool != netip.MustParsePrefix("10.2.0.0/16") {
		t.Fatalf("allocate: %+v %v", alloc, err)
	}
	if alloc, err := allocateRequest(&network.AllocateNetworkRequest{NetworkID: "n"}); err != nil || alloc.Pool.IsValid() {
		t.Fatalf("allocate without IPAM data: %+v %v", alloc, err)
	}
	ep, err := endpointRequest(&network.CreateEndpointRequest{NetworkID: "n", EndpointID: "e", Interface: &network.EndpointInterface{Address: "10.1.0.5/16", MacAddress: "02:00:00:00:00:01"}})
	if err != nil || ep.Addr != netip.MustParsePrefix("10.1.0.5/16") || ep.MAC != "02:00:00:00:00:01" {
		t.Fatalf("endpoint: %+v %v", ep, err)
	}
	ep6, err := endpointRequest(&network.CreateEndpointRequest{NetworkID: "n", EndpointID: "e", Interface: &network.EndpointInterface{Address: "10.1.0.5/32", AddressIPv6: "fd00::5/128"}})
	if err != nil || ep6.Addr6 != netip.MustParsePrefix("fd00::5/128") {
		t.Fatalf("dual-stack endpoint: %+v %v", ep6, err)
	}
	// Labels from the endpoint's driver options; other owners' options pass.
	lab, err := endpointRequest(&network.CreateEndpointRequest{NetworkID: "n", EndpointID: "e", Interface: &network.EndpointInterface{Address: "10.1.0.5/16"},
		Options: map[string]any{"tartan.label.app": "api", "tartan.label.example.com/tier": "back", "com.docker.network.endpoint.exposedports": []any{}}})
	if err != nil || len(lab.Labels) != 2 || lab.Labels["app"] != "api" || lab.Labels["example.com/tier"] != "back" {
		t.Fatalf("labels: %+v %v", lab.Labels, err)
	}
	for opt, want := range map[string]string{
		"tartan.lable.app":  "unknown endpoint option tartan.lable.app",
		"tartan.label.a b":  "label key",
		"tartan.label.app!": "label key",
		"tartan.label.":     "label key",
	} {
		_, err := endpointRequest(&network.CreateEndpointRequest{EndpointID: "e", Interface: &network.EndpointInterface{Address: "10.1.0.5/16"}, Options: map[string]any{opt: "x"}})
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("option %s: %v, want ErrInvalid with %q", opt, err, want)
		}
	}
	if _, err := endpointRequest(&network.CreateEndpointRequest{EndpointID: "e", Interface: &network.EndpointInterface{Address: "10.1.0.5/16"}, Options: map[string]any{"tartan.label.app": "not ok!"}}); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "tartan.label.app=not ok!") {
		t.Errorf("a bad label value: %v", err)
	}
	for _, bad := range []*network.EndpointInterface{nil, {Address: "x"}, {Address: "fd00::5/64"}, {Address: "10.1.0.5/16", AddressIPv6: "10.1.0.6/16"}, {Address: "10.1.0.5/16", AddressIPv6: "nope"}} {
		if _, err := endpointRequest(&network.CreateEndpointRequest{EndpointID: "e", Interface: bad}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
}

// TestJoinResponse: routes through a next hop and connected routes, and a
// missing gateway disables Docker's gateway service.
func TestJoinResponse(t *testing.T) {
	gw := netip.MustParseAddr("169.254.1.1")
	r := joinResponse(backend.Join{Interface: "tp1", Gateway: gw, Routes: []backend.StaticRoute{
		{Dst: netip.PrefixFrom(gw, 32)}, {Dst: netip.MustParsePrefix("10.1.0.0/16"), NextHop: gw}}})
	if r.InterfaceName.SrcName != "tp1" || r.InterfaceName.DstPrefix != "eth" || r.Gateway != "169.254.1.1" || r.DisableGatewayService ||
		len(r.StaticRoutes) != 2 || r.StaticRoutes[0].RouteType != routeConnected || r.StaticRoutes[0].NextHop != "" ||
		r.StaticRoutes[1].RouteType != routeNextHop || r.StaticRoutes[1].NextHop != "169.254.1.1" || r.StaticRoutes[1].Destination != "10.1.0.0/16" {
		t.Fatalf("routed join: %+v", r)
	}
	if r := joinResponse(backend.Join{Interface: "tp2"}); !r.DisableGatewayService || r.Gateway != "" || len(r.StaticRoutes) != 0 {
		t.Fatalf("join without a gateway: %+v", r)
	}
}
