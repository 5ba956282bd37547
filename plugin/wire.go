package plugin

import (
	"encoding/json"
	"net/netip"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/internal/dockerid"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/policy"
)

// The plugin speaks libnetwork's wire (go-plugins-helpers' types); the
// driver its own requests. These turn one into the other and refuse what
// cannot be turned.

// networkRequest reads a CreateNetwork request: one IPv4 pool, and one
// IPv6 pool when the network is dual-stack (--ipv6).
func networkRequest(r *network.CreateNetworkRequest) (driver.NetworkRequest, error) {
	if len(r.IPv4Data) == 0 && len(r.IPv6Data) > 0 {
		return driver.NetworkRequest{}, errdefs.Invalid("IPv6-only networks are not supported: give an IPv4 --subnet beside the IPv6 one (and leave out --ipv4=false)")
	}
	pool, data, err := ipv4Pool(r.IPv4Data, false)
	if err != nil {
		return driver.NetworkRequest{}, err
	}
	req := driver.NetworkRequest{ID: r.NetworkID, Options: r.Options, Pool: pool, Space: data.AddressSpace}
	if req.Gateway, err = gatewayOf(data); err != nil {
		return req, err
	}
	switch {
	case len(r.IPv6Data) > 1:
		return req, errdefs.Invalid("give at most one IPv6 --subnet (got %d)", len(r.IPv6Data))
	case len(r.IPv6Data) == 1 && r.IPv6Data[0] != nil:
		d6 := r.IPv6Data[0]
		if d6.AddressSpace != data.AddressSpace {
			return req, errdefs.Invalid("the IPv6 pool is in address space %q, the IPv4 pool in %q: use tartan's IPAM for both (--ipam-driver tartan:latest)", d6.AddressSpace, data.AddressSpace)
		}
		if req.Pool6, err = netip.ParsePrefix(d6.Pool); err != nil || !req.Pool6.Addr().Is6() {
			return req, errdefs.Invalid("IPv6 pool %q from IPAM is not an IPv6 CIDR", d6.Pool)
		}
		if req.Gateway6, err = gatewayOf(d6); err != nil {
			return req, err
		}
	}
	return req, nil
}

// gatewayOf reads the gateway IPAM reserved for a pool, if it did.
func gatewayOf(d *network.IPAMData) (netip.Prefix, error) {
	if d.Gateway == "" {
		return netip.Prefix{}, nil
	}
	gw, err := netip.ParsePrefix(d.Gateway)
	if err != nil {
		return gw, errdefs.Invalid("gateway %q from IPAM is not an address with its prefix length", d.Gateway)
	}
	return gw, nil
}

// allocateRequest reads a swarm manager's AllocateNetwork request. The
// manager's allocator sends the pool without its address space; every
// node's CreateNetwork checks that the IPAM is tartan's.
func allocateRequest(r *network.AllocateNetworkRequest) (driver.AllocateRequest, error) {
	req := driver.AllocateRequest{ID: r.NetworkID, Options: r.Options}
	if len(r.IPv4Data) == 0 {
		return req, nil
	}
	v4 := make([]*network.IPAMData, len(r.IPv4Data))
	for i := range r.IPv4Data {
		v4[i] = &r.IPv4Data[i]
	}
	var err error
	req.Pool, _, err = ipv4Pool(v4, true)
	return req, err
}

// ipv4Pool checks the IPv4 IPAM data of a network request: exactly one
// pool, from tartan's IPAM unless anySpace.
func ipv4Pool(v4 []*network.IPAMData, anySpace bool) (netip.Prefix, *network.IPAMData, error) {
	if len(v4) != 1 || v4[0] == nil {
		return netip.Prefix{}, nil, errdefs.Invalid("give exactly one IPv4 --subnet (got %d)", len(v4))
	}
	if s := v4[0].AddressSpace; !anySpace && s != ipam.LocalSpace && s != ipam.GlobalSpace {
		return netip.Prefix{}, nil, errdefs.Invalid("this network needs tartan's IPAM as well: add --ipam-driver tartan:latest (the plugin's name) to docker network create")
	}
	p, err := netip.ParsePrefix(v4[0].Pool)
	if err != nil {
		return netip.Prefix{}, nil, errdefs.Invalid("pool %q from IPAM is not a CIDR", v4[0].Pool)
	}
	return p, v4[0], nil
}

// endpointRequest reads a CreateEndpoint request.
func endpointRequest(r *network.CreateEndpointRequest) (driver.EndpointRequest, error) {
	if r.Interface == nil || r.Interface.Address == "" {
		return driver.EndpointRequest{}, errdefs.Invalid("endpoint %s has no IPv4 address: tartan networks need --ipam-driver tartan:latest", dockerid.Short(r.EndpointID))
	}
	addr, err := netip.ParsePrefix(r.Interface.Address)
	if err != nil || !addr.Addr().Is4() {
		return driver.EndpointRequest{}, errdefs.Invalid("endpoint address %q is not an IPv4 CIDR", r.Interface.Address)
	}
	labels, err := policy.EndpointLabels(r.Options)
	if err != nil {
		return driver.EndpointRequest{}, errdefs.Invalid("endpoint %s: %v", dockerid.Short(r.EndpointID), err)
	}
	req := driver.EndpointRequest{NetworkID: r.NetworkID, EndpointID: r.EndpointID, Addr: addr, MAC: r.Interface.MacAddress, Labels: labels}
	if a6 := r.Interface.AddressIPv6; a6 != "" {
		if req.Addr6, err = netip.ParsePrefix(a6); err != nil || !req.Addr6.Addr().Is6() || req.Addr6.Addr().Zone() != "" {
			return req, errdefs.Invalid("endpoint IPv6 address %q is not an IPv6 CIDR", a6)
		}
	}
	return req, nil
}

// endpointResponse tells Docker the MAC address the driver picked, if it
// picked one.
func endpointResponse(picked string) *network.CreateEndpointResponse {
	if picked == "" {
		return &network.CreateEndpointResponse{}
	}
	return &network.CreateEndpointResponse{Interface: &network.EndpointInterface{MacAddress: picked}}
}

// joinResponse is a backend's Join in libnetwork's words: no gateway
// disables Docker's gateway service for the endpoint.
func joinResponse(j backend.Join) *network.JoinResponse {
	resp := &network.JoinResponse{InterfaceName: network.InterfaceName{SrcName: j.Interface, DstPrefix: "eth"}}
	for _, r := range j.Routes {
		sr := &network.StaticRoute{Destination: r.Dst.String(), RouteType: routeConnected}
		if r.NextHop.IsValid() {
			sr.RouteType, sr.NextHop = routeNextHop, r.NextHop.String()
		}
		resp.StaticRoutes = append(resp.StaticRoutes, sr)
	}
	if j.Gateway.IsValid() {
		resp.Gateway = j.Gateway.String()
	} else {
		resp.DisableGatewayService = true
	}
	if j.Gateway6.IsValid() {
		resp.GatewayIPv6 = j.Gateway6.String()
	}
	return resp
}

// libnetwork's route types (types.NEXTHOP, types.CONNECTED).
const (
	routeNextHop   = 0
	routeConnected = 1
)

// Docker's key for published ports in ProgramExternalConnectivity.
const dockerPortMap = "com.docker.network.portmap"

// portBinding is libnetwork's types.PortBinding as it travels in JSON.
type portBinding struct {
	Proto       int
	IP          string
	Port        int
	HostIP      string
	HostPort    int
	HostPortEnd int
}

var protocols = map[int]string{6: "tcp", 17: "udp", 132: "sctp"}

// parsePorts reads the port map Docker sends for docker run -p and -P. A
// binding with no host port (-P, -p 80) or a host port range
// (-p 8000-8010:80) leaves the choice of the port to the driver.
func parsePorts(opts map[string]any) ([]driver.PortRequest, error) {
	raw, ok := opts[dockerPortMap]
	if !ok || raw == nil {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, errdefs.Invalid("published ports have an unexpected form: %v", err)
	}
	var bindings []portBinding
	if err := json.Unmarshal(b, &bindings); err != nil {
		return nil, errdefs.Invalid("published ports have an unexpected form: %v", err)
	}
	var out []driver.PortRequest
	for _, pb := range bindings {
		proto, ok := protocols[pb.Proto]
		if !ok {
			return nil, errdefs.Invalid("published port %d uses protocol %d: tartan publishes tcp, udp and sctp", pb.Port, pb.Proto)
		}
		if pb.Port < 1 || pb.Port > 65535 || pb.HostPort < 0 || pb.HostPort > 65535 || pb.HostPortEnd < 0 || pb.HostPortEnd > 65535 {
			return nil, errdefs.Invalid("published port %d:%d/%s is out of range (1-65535)", pb.HostPort, pb.Port, proto)
		}
		if pb.HostPortEnd != 0 && pb.HostPortEnd < pb.HostPort {
			return nil, errdefs.Invalid("host port range %d-%d for %d/%s ends before it starts: give it as LOW-HIGH", pb.HostPort, pb.HostPortEnd, pb.Port, proto)
		}
		if pb.HostPort == 0 && pb.HostPortEnd != 0 {
			return nil, errdefs.Invalid("host port range 0-%d for %d/%s: give it as LOW-HIGH with LOW at least 1, or no host port for any free one", pb.HostPortEnd, pb.Port, proto)
		}
		p := driver.PortRequest{Proto: proto, Port: pb.Port, HostPort: pb.HostPort, HostPortEnd: max(pb.HostPortEnd, pb.HostPort)}
		if pb.HostIP != "" {
			ip, err := netip.ParseAddr(pb.HostIP)
			if err != nil || !ip.Is4() {
				return nil, errdefs.Invalid("host address %q of published port %d/%s: use an IPv4 address of this host", pb.HostIP, pb.Port, proto)
			}
			if !ip.IsUnspecified() {
				p.HostIP = ip.String()
			}
		}
		out = append(out, p)
	}
	return out, nil
}
