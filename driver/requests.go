package driver

import "net/netip"

// The driver's requests, in its own terms: the plugin (plugin/wire.go)
// parses libnetwork's and refuses what cannot be one of these.

// NetworkRequest is a CreateNetwork request.
type NetworkRequest struct {
	ID string
	// Options is Docker's option map: com.docker.network.generic holds the
	// -o options, beside Docker's own (internal, enable_ipv6).
	Options map[string]any
	Pool    netip.Prefix // the network's IPv4 pool
	Space   string       // the pool's IPAM address space
	// Gateway is the gateway IPAM reserved (--gateway), with the pool's
	// prefix length; invalid when there is none.
	Gateway netip.Prefix
	// Pool6 and Gateway6 are the IPv6 pool and gateway of a dual-stack
	// network (--ipv6); invalid when it has none.
	Pool6    netip.Prefix
	Gateway6 netip.Prefix
}

// AllocateRequest is a swarm manager's AllocateNetwork request.
type AllocateRequest struct {
	ID      string
	Options map[string]string
	// Pool is the network's IPv4 pool; invalid when the network's IPAM is
	// not tartan's (its nodes' CreateNetwork refuses it then).
	Pool netip.Prefix
}

// EndpointRequest is a CreateEndpoint request.
type EndpointRequest struct {
	NetworkID  string
	EndpointID string
	Addr       netip.Prefix // the address IPAM gave, with the pool's length
	Addr6      netip.Prefix // its IPv6 address on a dual-stack network, or invalid
	MAC        string       // "": the driver picks one
	// Labels are the endpoint's identity for network policy (its
	// tartan.label.<key> driver options), validated.
	Labels map[string]string
}

// PortRequest is one port docker run -p or -P asks to publish. HostPort 0
// asks for any free port of the host's ephemeral range (-P, -p 80); a
// HostPortEnd above HostPort for any free port of HostPort-HostPortEnd
// (-p 8000-8010:80). HostIP "" publishes on every address of the host.
type PortRequest struct {
	Proto       string
	HostIP      string
	Port        int
	HostPort    int
	HostPortEnd int
}

// fixed says whether the request names one host port.
func (r PortRequest) fixed() bool { return r.HostPort != 0 && r.HostPortEnd <= r.HostPort }
