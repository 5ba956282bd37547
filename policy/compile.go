package policy

import (
	"cmp"
	"net/netip"
	"slices"
)

// View is what a host knows of the cluster when it compiles: every endpoint
// with an identity (its address, network and labels), and each network's
// pools (a network peer is every address of them).
type View struct {
	Endpoints []Endpoint
	Pools     map[string][]netip.Prefix // network name -> its IPv4 and IPv6 pools
}

// Rules are what one local endpoint enforces: its ingress (what may reach
// it) and its egress (what it may reach). They agree with Evaluate for
// every flow whose ends the View knows (TestCompileAgrees).
type Rules struct {
	Ingress, Egress Side
}

// Side is one direction of an endpoint: open (not Isolated: everything
// passes), or only what an Allow lets through.
type Side struct {
	Isolated bool
	Allows   []Allow
}

// Allow lets a set of peers through on a protocol and port range. The
// peers are prefixes (the addresses of the endpoints a selector chose, a
// network's pools, a CIDR less its exceptions); AnyPeer: every address.
// Policy and Rule name the rule it came from ("" for a network's default).
type Allow struct {
	AnyPeer  bool
	Peers    []netip.Prefix
	Protocol string    // tcp, udp, icmp, any
	Ports    PortRange // tcp and udp: zero is every port
	Policy   string
	Rule     int
}

// Passes says whether the side lets a flow with peer through.
func (s Side) Passes(peer netip.Addr, proto string, port uint16) bool {
	if !s.Isolated {
		return true
	}
	return slices.ContainsFunc(s.Allows, func(a Allow) bool { return a.Matches(peer, proto, port) })
}

// Matches says whether the allow lets peer through on proto and port.
func (a Allow) Matches(peer netip.Addr, proto string, port uint16) bool {
	if !(Port{Protocol: a.Protocol, Port: a.Ports}).Matches(proto, port) {
		return false
	}
	return a.AnyPeer || slices.ContainsFunc(a.Peers, func(p netip.Prefix) bool { return p.Contains(peer.Unmap()) })
}

// Compile gives endpoint self (of this host) its rules under the policies.
func Compile(policies []Policy, self Endpoint, view View) Rules {
	sorted := slices.SortedFunc(slices.Values(policies), func(a, b Policy) int { return cmp.Compare(a.Name, b.Name) })
	return Rules{Ingress: compileSide(sorted, Ingress, self, view), Egress: compileSide(sorted, Egress, self, view)}
}

func compileSide(policies []Policy, d Direction, self Endpoint, view View) Side {
	var side Side
	for _, p := range policies {
		if !p.Isolates(d) || !p.Applies(self) {
			continue
		}
		side.Isolated = true
		for i, r := range p.Rules(d) {
			side.Allows = append(side.Allows, compileRule(r, d, view, p.Name, i)...)
		}
	}
	switch {
	case side.Isolated:
	case self.Mode == ModeDefaultDeny:
		side.Isolated = true
	case self.Mode == ModeIsolated && d == Ingress:
		// Every peer but the network's own endpoints.
		side.Isolated = true
		side.Allows = []Allow{{Peers: complement(view.Pools[self.Network]), Protocol: Any, Rule: -1}}
	}
	return side
}

// compileRule turns one rule into allows: one per port (or one for every
// port), each with the rule's peers as prefixes.
func compileRule(r Rule, d Direction, view View, policy string, index int) []Allow {
	base := Allow{AnyPeer: len(r.Peers(d)) == 0, Policy: policy, Rule: index}
	if !base.AnyPeer {
		for _, peer := range r.Peers(d) {
			base.Peers = append(base.Peers, peerPrefixes(peer, view)...)
		}
		if len(base.Peers) == 0 {
			return nil // its peers name nobody now: it lets nothing through
		}
	}
	if len(r.Ports) == 0 {
		base.Protocol = Any
		return []Allow{base}
	}
	out := make([]Allow, 0, len(r.Ports))
	for _, pt := range r.Ports {
		a := base
		a.Protocol, a.Ports = pt.Protocol, pt.Port
		out = append(out, a)
	}
	return out
}

// peerPrefixes are the addresses a peer names: its CIDR less its
// exceptions, or the endpoints of the view it chooses (a network without a
// selector: the network's pools, which hold every endpoint of it).
func peerPrefixes(p Peer, view View) []netip.Prefix {
	if p.CIDR != "" {
		cidr, err := ParseCIDR(p.CIDR)
		if err != nil {
			return nil
		}
		out := []netip.Prefix{cidr}
		for _, x := range p.Except {
			if ex, err := ParseCIDR(x); err == nil {
				out = subtract(out, ex)
			}
		}
		return out
	}
	if p.Selector == nil {
		return slices.Clone(view.Pools[p.Network])
	}
	var out []netip.Prefix
	for _, e := range view.Endpoints {
		if p.Matches(e) {
			out = append(out, netip.PrefixFrom(e.Addr.Unmap(), e.Addr.Unmap().BitLen()))
		}
	}
	return out
}

// complement is every address (IPv4 and IPv6) outside the prefixes.
func complement(ps []netip.Prefix) []netip.Prefix {
	out := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	for _, p := range ps {
		out = subtract(out, p)
	}
	return out
}

// subtract removes x from the prefixes: a prefix inside x goes, a prefix
// holding x is split into the halves around it, down to x's length.
func subtract(ps []netip.Prefix, x netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range ps {
		switch {
		case p.Addr().Is4() != x.Addr().Is4() || !p.Overlaps(x):
			out = append(out, p)
		case p.Bits() >= x.Bits(): // inside x
		default:
			out = append(out, split(p, x)...)
		}
	}
	return out
}

// split is p without x (x strictly inside p): at each length from p's down
// to x's, the half that does not hold x.
func split(p, x netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for cur := p; cur.Bits() < x.Bits(); {
		lo := netip.PrefixFrom(cur.Addr(), cur.Bits()+1)
		hi := netip.PrefixFrom(upperHalf(cur), cur.Bits()+1)
		if lo.Contains(x.Addr()) {
			out, cur = append(out, hi), lo
		} else {
			out, cur = append(out, lo), hi
		}
	}
	return out
}

// upperHalf is the first address of p's upper half.
func upperHalf(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bit := p.Bits() // the bit that the upper half sets
	b[bit/8] |= 0x80 >> (bit % 8)
	a, _ := netip.AddrFromSlice(b)
	return a
}
