package backend

import "net/netip"

// Network is this host's record of a Docker network, kept in the host's
// embedded store (Docker never replays CreateNetwork: this is how a
// restarted plugin knows its networks). Its JSON form is what earlier
// versions wrote.
type Network struct {
	ID       string `json:"id"`
	Pool     string `json:"pool"`
	Backend  string `json:"backend"`
	VNI      int    `json:"vni,omitempty"`
	MTU      int    `json:"mtu"`
	Internal bool   `json:"internal,omitempty"`
	Direct   bool   `json:"directRouting,omitempty"`
	// Gateway is the link-local address that containers of a routed
	// network ARP for; one per network on this host, so that a container
	// on two networks gets two distinct connected routes. On macvlan
	// networks it is the physical router (--gateway), or "".
	Gateway string `json:"gateway"`
	Device  string `json:"device,omitempty"` // vxlan: the VXLAN device
	Space   string `json:"space,omitempty"`  // the pool's address space
	// macvlan: the parent interface (ParentCreated: a VLAN link tartan
	// made, set on every local network that shares it), the mode, and the
	// host-access shim with its address.
	Parent        string `json:"parent,omitempty"`
	ParentCreated bool   `json:"parentCreated,omitempty"`
	Mode          string `json:"mode,omitempty"`
	Shim          string `json:"shim,omitempty"`
	ShimMAC       string `json:"shimMAC,omitempty"`
	ShimIP        string `json:"shimIP,omitempty"`
	// ReleasePending: Docker released the pool while this network used
	// it; the pool goes when the network is deleted.
	ReleasePending bool `json:"releasePending,omitempty"`
	// Pool6 is the IPv6 pool of a dual-stack network (--ipv6), "" when it
	// has none. Gateway6 is its containers' IPv6 gateway: link-local on
	// routed networks, the segment's router on macvlan ones (or "").
	// NAT66: what leaves the IPv6 pool is masqueraded (-o tartan.nat66).
	Pool6    string `json:"pool6,omitempty"`
	Gateway6 string `json:"gateway6,omitempty"`
	NAT66    bool   `json:"nat66,omitempty"`
	// Policy is the network's network-policy default (-o tartan.policy;
	// "" is allow).
	Policy string `json:"policy,omitempty"`
	// Announce: this host announces its part of the pool to its BGP peers
	// (-o tartan.bgp=true on host-gw and vxlan networks; always on bgp
	// ones).
	Announce bool `json:"bgp,omitempty"`
	// ReleasePending6 is ReleasePending for the IPv6 pool.
	ReleasePending6 bool `json:"releasePending6,omitempty"`
}

// Pool6Prefix is the network's IPv6 pool (invalid when it has none).
func (n Network) Pool6Prefix() netip.Prefix {
	p, _ := netip.ParsePrefix(n.Pool6)
	return p
}

// Gateway6Addr is the network's IPv6 gateway (invalid when it has none).
func (n Network) Gateway6Addr() netip.Addr {
	a, _ := netip.ParseAddr(n.Gateway6)
	return a
}

// PoolPrefix is the network's pool.
func (n Network) PoolPrefix() netip.Prefix {
	p, _ := netip.ParsePrefix(n.Pool)
	return p
}

// GatewayAddr is the network's gateway (invalid when it has none).
func (n Network) GatewayAddr() netip.Addr {
	a, _ := netip.ParseAddr(n.Gateway)
	return a
}

// Links are the links the network itself owns (not its endpoints').
func (n Network) Links() []string {
	var out []string
	for _, l := range []string{n.Device, n.Shim} {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// Endpoint is this host's record of an endpoint.
type Endpoint struct {
	ID      string `json:"id"`
	Network string `json:"network"`
	IP      string `json:"ip"`
	MAC     string `json:"mac"`
	Block   string `json:"block,omitempty"`
	HostIf  string `json:"hostIf"`
	PeerIf  string `json:"peerIf"`
	// Ports are published with docker run -p.
	Ports []Port `json:"ports,omitempty"`
	// IP6 is the endpoint's IPv6 address on a dual-stack network.
	IP6 string `json:"ip6,omitempty"`
	// Labels are the endpoint's identity for network policy.
	Labels map[string]string `json:"labels,omitempty"`
}

// Addr6 is the endpoint's IPv6 address (invalid when it has none).
func (e Endpoint) Addr6() netip.Addr {
	a, _ := netip.ParseAddr(e.IP6)
	return a
}

// Addr is the endpoint's address.
func (e Endpoint) Addr() netip.Addr {
	a, _ := netip.ParseAddr(e.IP)
	return a
}

// Port is one port an endpoint publishes.
type Port struct {
	Proto    string `json:"proto"`
	HostIP   string `json:"hostIP,omitempty"`
	HostPort int    `json:"hostPort"`
	Port     int    `json:"port"`
}
