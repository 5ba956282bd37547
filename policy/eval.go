package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// Mode is a network's default (the network option tartan.policy).
type Mode string

// The network defaults: allow (what no policy selects passes: Docker's
// behaviour), isolated (endpoints of the network do not reach each other
// unless a policy allows it; what comes from outside the network passes),
// default-deny (every endpoint of the network is isolated both ways, as if a
// policy without rules selected it).
const (
	ModeAllow       Mode = "allow"
	ModeIsolated    Mode = "isolated"
	ModeDefaultDeny Mode = "default-deny"
)

// ParseMode reads a tartan.policy value ("" is allow).
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case "":
		return ModeAllow, nil
	case ModeAllow, ModeIsolated, ModeDefaultDeny:
		return m, nil
	}
	return "", fmt.Errorf("tartan.policy=%s: use allow, isolated or default-deny", s)
}

// Endpoint is one end of a flow: an endpoint of a tartan network (Labels,
// Network and its Mode), or an address outside them (only Addr).
type Endpoint struct {
	Addr    netip.Addr
	Network string // "" outside tartan's networks
	Mode    Mode
	Labels  map[string]string
}

// InCluster says whether the endpoint is one of tartan's.
func (e Endpoint) InCluster() bool { return e.Network != "" }

// Flow is a connection's first packet: from Src to Dst, Protocol (tcp,
// udp, icmp) and, for TCP and UDP, the destination Port.
type Flow struct {
	Src, Dst Endpoint
	Protocol string
	Port     uint16
}

// Decision is one direction's answer for a flow: allowed or not, and why.
type Decision struct {
	Direction Direction
	Allowed   bool
	// Policy and Rule name the rule that allowed the flow (Rule is its
	// index in the direction's rules); both empty when none did.
	Policy string
	Rule   int
	// Reason says in words what decided (the rule, the isolation, or
	// that nothing selects the endpoint).
	Reason string
}

// Verdict is a flow's answer: the source's egress and the destination's
// ingress, and the flow passes when both allow it.
type Verdict struct {
	Allowed bool
	Egress  Decision
	Ingress Decision
}

// Evaluate decides a flow against the policies (sorted or not: the answer
// names the first allowing rule in the order of the policies' names). It is
// the reference the kernel programs are compiled to agree with.
func Evaluate(policies []Policy, f Flow) Verdict {
	sorted := slices.SortedFunc(slices.Values(policies), func(a, b Policy) int { return cmp.Compare(a.Name, b.Name) })
	v := Verdict{
		Egress:  decide(sorted, Egress, f.Src, f.Dst, f),
		Ingress: decide(sorted, Ingress, f.Dst, f.Src, f),
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v
}

// decide answers direction d for the endpoint self whose peer is other:
// egress of the source (self = Src), ingress of the destination (self =
// Dst).
func decide(policies []Policy, d Direction, self, other Endpoint, f Flow) Decision {
	out := Decision{Direction: d, Rule: -1}
	if !self.InCluster() {
		out.Allowed, out.Reason = true, fmt.Sprintf("%s is outside tartan's networks: no %s policy applies", self.Addr, d)
		return out
	}
	var selecting []string
	for _, p := range policies {
		if !p.Isolates(d) || !p.Applies(self) {
			continue
		}
		selecting = append(selecting, p.Name)
		for i, r := range p.Rules(d) {
			if r.Matches(d, other, f) {
				out.Allowed, out.Policy, out.Rule = true, p.Name, i
				out.Reason = fmt.Sprintf("allowed by policy %s, %s rule %d", p.Name, d, i)
				return out
			}
		}
	}
	switch {
	case len(selecting) > 0:
		out.Reason = fmt.Sprintf("denied: %s is selected for %s by %v and none of their rules allows this flow", self.Addr, d, selecting)
	case self.Mode == ModeDefaultDeny:
		out.Reason = fmt.Sprintf("denied: network %s is default-deny and no policy allows this flow", self.Network)
	case self.Mode == ModeIsolated && d == Ingress && other.Network == self.Network:
		out.Reason = fmt.Sprintf("denied: network %s is isolated (its endpoints reach each other only where a policy allows it)", self.Network)
	default:
		out.Allowed, out.Reason = true, fmt.Sprintf("no policy selects %s for %s", self.Addr, d)
	}
	return out
}

// Applies says whether the policy selects endpoint e (its networks, then
// its selector).
func (p Policy) Applies(e Endpoint) bool {
	if !e.InCluster() {
		return false
	}
	if len(p.Networks) > 0 && !slices.Contains(p.Networks, e.Network) {
		return false
	}
	return p.Selector.Matches(e.Labels)
}

// Matches says whether the rule of direction d lets peer in (or out) for
// the flow's protocol and port.
func (r Rule) Matches(d Direction, peer Endpoint, f Flow) bool {
	if peers := r.Peers(d); len(peers) > 0 && !slices.ContainsFunc(peers, func(p Peer) bool { return p.Matches(peer) }) {
		return false
	}
	return len(r.Ports) == 0 || slices.ContainsFunc(r.Ports, func(p Port) bool { return p.Matches(f.Protocol, f.Port) })
}

// Matches says whether the peer names endpoint e.
func (p Peer) Matches(e Endpoint) bool {
	if p.CIDR != "" {
		cidr, err := ParseCIDR(p.CIDR)
		if err != nil || !cidr.Contains(e.Addr.Unmap()) {
			return false
		}
		for _, x := range p.Except {
			if ex, err := ParseCIDR(x); err == nil && ex.Contains(e.Addr.Unmap()) {
				return false
			}
		}
		return true
	}
	if !e.InCluster() {
		return false
	}
	if p.Network != "" && p.Network != e.Network {
		return false
	}
	return p.Selector == nil || p.Selector.Matches(e.Labels)
}

// Matches says whether the port lets protocol proto and port through.
func (p Port) Matches(proto string, port uint16) bool {
	switch p.Protocol {
	case Any:
		return true
	case ICMP:
		return proto == ICMP
	}
	return p.Protocol == proto && p.Port.Contains(port)
}

// Matches says whether labels satisfy the selector.
func (s Selector) Matches(labels map[string]string) bool {
	for k, v := range s.Labels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.Match {
		v, ok := labels[r.Key]
		switch r.Op {
		case OpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case OpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case OpExists:
			if !ok {
				return false
			}
		case OpNotExists:
			if ok {
				return false
			}
		default:
			return false // never valid: selects nothing rather than everything
		}
	}
	return true
}
