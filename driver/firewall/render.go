package firewall

import (
	"fmt"
	"net/netip"
	"sort"
)

// Interfaces tartan makes, as iptables patterns of the name prefixes
// driver/kernel gives them (kernel.EndpointPrefix, kernel.VXLANPrefix; a
// test holds them equal: firewall imports nothing of tartan's).
const (
	endpointIfs = "tn+"      // host ends of endpoint veths
	vxlanIfs    = "tartan.+" // VXLAN devices
)

// Pool is what the firewall needs to know of a routed network: its pool.
// A dual-stack network has two: its IPv4 pool and its IPv6 pool.
type Pool struct {
	Pool     netip.Prefix
	Internal bool
	Device   string // the VXLAN device, if the network has one
	// Tunnel is the WireGuard device its peers' traffic arrives on, if
	// it has one (shared by networks: WireGuard itself admits from each
	// peer only that peer's addresses); the pool's traffic is then never
	// taken from the underlay or a VXLAN device.
	Tunnel string
	// NAT66: masquerade an IPv6 pool's traffic leaving it (off by default).
	// Ignored for IPv4 pools, masqueraded unless Internal.
	NAT66 bool
	// Underlay: peers' traffic of the pool arrives in clear on the
	// underlay (host-gw, direct routing). Otherwise the pool's own
	// addresses are never taken from the underlay: a machine on the LAN
	// cannot inject into a vxlan network (issue 24, audit M3).
	Underlay bool
	// Announced: the pool is announced to the fabric (BGP): any address
	// may reach it from the underlay (not only the pool's own), and its
	// traffic leaves it with its own source address (no masquerade).
	// Internal pools stay closed to the outside.
	Announced bool
	// Fabric: the fabric routes the pool's other hosts' blocks (bgp), so
	// the driver gives each of Blocks, this host's, an unreachable guard
	// route, not the whole pool (neither is rendered).
	Fabric bool
	Blocks []netip.Prefix
}

// Port is a published port: HostPort on the host (on HostIP only, when set)
// forwarded to Port of the container at IP.
type Port struct {
	Proto    string // tcp, udp or sctp
	HostIP   netip.Addr
	HostPort int
	IP       netip.Addr
	Port     int
}

// State is everything the rules are rendered from.
type State struct {
	Pools []Pool
	Ports []Port
	// Underlay is the interface peers' host-gw and direct-routed packets
	// arrive on ("" when unknown).
	Underlay string
	// Bridges are the host's bridge interfaces (Docker's among them):
	// tartan traffic never enters them except through a published port.
	Bridges []string
	// Uplinks are the interfaces the host's own traffic leaves by (the
	// underlay, the default route's): never taken for Docker's bridges,
	// whatever their name or kind (a br0 or vmbr0 that carries the host's
	// uplink; issue 24, audit M5).
	Uplinks []string
	// VXLANPort, when set, is the port of the VXLAN devices: exempt from
	// connection tracking (the inner packets are tracked), closed to
	// forwarded traffic, and open only to Peers.
	VXLANPort int
	// Peers are the underlay addresses of the cluster's other hosts that
	// may send VXLAN here; the port is closed to everyone else, also while
	// none is known (nil or empty: closed to all).
	Peers []netip.Addr
	// Policed are the local endpoints network policy isolates in a
	// direction, with their compiled rules (policy.go).
	Policed []Policed
	// PolicedLive says Policed was compiled from a live view of the
	// cluster's policies (the driver keeps such rules for its next start);
	// it is not rendered.
	PolicedLive bool
}

// Rules is the rendered rule set, per chain.
type Rules struct {
	Forward, Isolate, Input, Postrouting, DNAT, Raw, RawOutput []string
	// Egress and Ingress are network policy's chains (empty: no endpoint
	// of this host is isolated), and Sets the ipsets their rules match.
	Egress, Ingress []string
	Sets            []Set
}

// Render computes the IPv4 rule set, from the IPv4 pools. It does no I/O.
//
// Isolation (every DROP) lives in the mangle table's FORWARD chain, which
// runs before any filter rule: Docker inserts its bridges' accept rules at
// the top of filter FORWARD whenever it makes a bridge network, so a filter
// rule of tartan's cannot stay ahead of "-i br-x ! -o br-x -j ACCEPT".
// What tartan lets through Docker's DROP policy (every ACCEPT) lives in the
// filter table, right below DOCKER-USER, so that operators' rules there hold
// for tartan traffic as for Docker's.
func Render(st State) Rules { return render(st, false) }

// Render6 computes the ip6tables rule set, from the IPv6 pools: the same
// isolation as Render's, without the VXLAN port's rules (the underlay is
// IPv4) and without DNAT (ports are published on IPv4 only). Their traffic
// leaving them is masqueraded only for pools with NAT66.
func Render6(st State) Rules { return render(st, true) }

// render computes the rule set of one address family, section by section
// in a fixed order (the order of the rules within each chain).
func render(st State, v6 bool) Rules {
	if v6 {
		// IPv4 only: published ports, the VXLAN underlay.
		st.Ports, st.VXLANPort, st.Peers = nil, 0, nil
	}
	w := renderer{st: st, v6: v6}
	for _, n := range st.Pools {
		if is6(n) == v6 {
			w.nets = append(w.nets, n)
		}
	}
	sort.Slice(w.nets, func(i, j int) bool { return w.nets[i].Pool.String() < w.nets[j].Pool.String() })
	w.ports = append([]Port(nil), st.Ports...)
	sort.Slice(w.ports, func(i, j int) bool { return portKey(w.ports[i]) < portKey(w.ports[j]) })
	w.peers = append([]netip.Addr(nil), st.Peers...)
	sort.Slice(w.peers, func(i, j int) bool { return w.peers[i].Less(w.peers[j]) })
	if len(w.nets) == 0 {
		return w.r
	}
	w.forgedIngress()
	w.established()
	w.vxlanIngress()
	w.policy() // before any RETURN of a published port's or a network's traffic
	w.publishedForward()
	w.isolation()
	w.bridges()
	w.outbound()
	w.dnat()
	w.raw()
	w.vxlanPort()
	return w.r
}

// renderer holds one address family's sorted state and the rules rendered
// so far.
type renderer struct {
	st    State
	v6    bool
	nets  []Pool // the family's pools, by prefix
	ports []Port
	peers []netip.Addr
	r     Rules
}

// both lets a packet through: RETURN in mangle, ACCEPT in filter.
func (w *renderer) both(format string, args ...any) {
	rule := fmt.Sprintf(format, args...)
	w.r.Isolate = append(w.r.Isolate, fmt.Sprintf("-A %s %s -j RETURN", IsolateChain, rule))
	w.r.Forward = append(w.r.Forward, fmt.Sprintf("-A %s %s -j ACCEPT", ForwardChain, rule))
}

// drop stops a packet, in mangle.
func (w *renderer) drop(format string, args ...any) {
	w.r.Isolate = append(w.r.Isolate, fmt.Sprintf("-A %s ", IsolateChain)+fmt.Sprintf(format, args...)+" -j DROP")
}

// forgedIngress: a WireGuard pool's traffic from other hosts arrives
// through its tunnel, decrypted and checked against the sender's addresses:
// a packet with its source on the underlay or a VXLAN device is a forgery,
// whatever connection it claims to belong to.
func (w *renderer) forgedIngress() {
	for _, n := range w.nets {
		if n.Tunnel != "" {
			for _, in := range plainIngress(w.st) {
				w.drop("-i %s -s %s", in, n.Pool)
			}
		}
	}
}

// established lets replies into every network.
func (w *renderer) established() {
	for _, n := range w.nets {
		w.both("-d %s -m conntrack --ctstate RELATED,ESTABLISHED", n.Pool)
	}
}

// vxlanIngress: a VXLAN device carries its own pool only, and containers
// never reach another host's VXLAN port.
func (w *renderer) vxlanIngress() {
	for _, n := range w.nets {
		if n.Device != "" {
			w.drop("-i %s ! -s %s", n.Device, n.Pool)
		}
	}
	if w.st.VXLANPort != 0 {
		w.drop("-i %s -p udp -m udp --dport %d", endpointIfs, w.st.VXLANPort)
		for _, p := range w.peers {
			w.drop("-d %s/32 -p udp -m udp --dport %d", p, w.st.VXLANPort)
		}
	}
}

// publishedForward: published ports are reached through the host's address
// (DNAT), not directly at the container from other networks.
func (w *renderer) publishedForward() {
	for _, p := range w.ports {
		w.both("-d %s/32 -p %s -m %s --dport %d -m conntrack --ctstate DNAT", p.IP, p.Proto, p.Proto, p.Port)
	}
}

// isolation: within a network, from tartan's own interfaces only (a packet
// from a Docker bridge with a spoofed source in the pool gets nowhere: the
// endpoint veths have a strict reverse-path check, the VXLAN devices
// vxlanIngress's rule; a WireGuard pool's other hosts come through its
// tunnel only). Nothing else enters a tartan network (other tartan
// networks, Docker's bridges, the outside), and internal networks go
// nowhere else.
func (w *renderer) isolation() {
	for _, n := range w.nets {
		ingress := []string{endpointIfs}
		switch {
		case n.Tunnel != "":
			ingress = append(ingress, n.Tunnel)
		default:
			if n.Device != "" {
				ingress = append(ingress, n.Device)
			}
			if n.Underlay && w.st.Underlay != "" {
				ingress = append(ingress, w.st.Underlay)
			}
		}
		for _, in := range ingress {
			w.both("-i %s -s %s -d %s", in, n.Pool, n.Pool)
		}
		if n.Announced && !n.Internal && w.st.Underlay != "" {
			w.both("-i %s -d %s", w.st.Underlay, n.Pool)
		}
	}
	for _, n := range w.nets {
		w.drop("-d %s", n.Pool)
	}
	for _, n := range w.nets {
		if n.Internal {
			w.drop("-s %s", n.Pool)
		}
	}
}

// bridges: to a published port (DNAT), Docker's or tartan's rules decide,
// as for Docker's bridges; out by an uplink, the other rules; into a bridge
// otherwise never.
func (w *renderer) bridges() {
	w.r.Isolate = append(w.r.Isolate, fmt.Sprintf("-A %s -i %s -m conntrack --ctstate DNAT -j RETURN", IsolateChain, endpointIfs))
	seen := map[string]bool{}
	for _, u := range w.st.Uplinks {
		if u != "" && !seen[u] {
			seen[u] = true
			w.r.Isolate = append(w.r.Isolate, fmt.Sprintf("-A %s -i %s -o %s -j RETURN", IsolateChain, endpointIfs, u))
		}
	}
	for _, b := range append([]string{"docker0", "br-+"}, w.st.Bridges...) {
		if !seen[b] {
			seen[b] = true
			w.drop("-i %s -o %s", endpointIfs, b)
		}
	}
}

// outbound lets a network that is not internal out, masqueraded (an IPv6
// pool only with NAT66).
func (w *renderer) outbound() {
	for _, n := range w.nets {
		if !n.Internal {
			w.r.Forward = append(w.r.Forward, fmt.Sprintf("-A %s -i %s -s %s -j ACCEPT", ForwardChain, endpointIfs, n.Pool))
			if !n.Announced && (!w.v6 || n.NAT66) {
				w.r.Postrouting = append(w.r.Postrouting, fmt.Sprintf("-A %s -s %s ! -d %s -j MASQUERADE", PostroutingChain, n.Pool, n.Pool))
			}
		}
	}
}

// dnat sends a published port (on its host address, when set) to its
// container.
func (w *renderer) dnat() {
	for _, p := range w.ports {
		dst := ""
		if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
			dst = fmt.Sprintf(" -d %s/32", p.HostIP)
		}
		w.r.DNAT = append(w.r.DNAT, fmt.Sprintf("-A %s%s -p %s -m %s --dport %d -j DNAT --to-destination %s:%d", DNATChain, dst, p.Proto, p.Proto, p.HostPort, p.IP, p.Port))
	}
}

// raw: a container sends with its own address only: strict reverse-path
// check on the endpoint veths, whatever the host's rp_filter sysctls say (a
// container with CAP_NET_RAW spoofed another network's source).
func (w *renderer) raw() {
	w.r.Raw = append(w.r.Raw, fmt.Sprintf("-A %s -i %s -m rpfilter --invert -j DROP", RawChain, endpointIfs))
}

// vxlanPort: only this host's own tunnels are exempt from connection
// tracking (forwarded container traffic to UDP/VXLANPort elsewhere is
// tracked, and masqueraded, as any other), and the port is open to the
// peers only.
func (w *renderer) vxlanPort() {
	port := w.st.VXLANPort
	if port == 0 {
		return
	}
	w.r.Raw = append(w.r.Raw, fmt.Sprintf("-A %s -p udp -m udp --dport %d -m addrtype --dst-type LOCAL -j NOTRACK", RawChain, port))
	w.r.RawOutput = append(w.r.RawOutput, fmt.Sprintf("-A %s -p udp -m udp --dport %d -m addrtype --src-type LOCAL -j NOTRACK", RawOutputChain, port))
	for _, p := range w.peers {
		w.r.Input = append(w.r.Input, fmt.Sprintf("-A %s -s %s/32 -p udp -m udp --dport %d -j RETURN", InputChain, p, port))
	}
	w.r.Input = append(w.r.Input, fmt.Sprintf("-A %s -p udp -m udp --dport %d -j DROP", InputChain, port))
}

// plainIngress are the interfaces other hosts' traffic arrives on in clear:
// the VXLAN devices and the underlay.
func plainIngress(st State) []string {
	if st.Underlay == "" {
		return []string{vxlanIfs}
	}
	return []string{vxlanIfs, st.Underlay}
}

// is6 says whether a pool is IPv6; anything else goes with IPv4, as before.
func is6(n Pool) bool { return n.Pool.Addr().Is6() }

// has6 says whether st has an IPv6 pool.
func has6(st State) bool {
	for _, n := range st.Pools {
		if is6(n) {
			return true
		}
	}
	return false
}

func portKey(p Port) string {
	return fmt.Sprintf("%s/%05d/%s/%s", p.Proto, p.HostPort, p.HostIP, p.IP)
}
