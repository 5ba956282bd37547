package firewall

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/tartan-net/tartan/policy"
)

// Network policy's chains (mangle, as every DROP of tartan's): TARTAN-
// ISOLATE jumps to both, egress first, while an endpoint of this host is
// isolated in a direction. A packet from an endpoint (-i its interface) is
// its egress, a packet to one (-o) its ingress: a flow between two
// endpoints of this host passes both, one between hosts the source's
// egress here and the destination's ingress there.
const (
	EgressChain  = "TARTAN-EGRESS"
	IngressChain = "TARTAN-INGRESS"
)

// Policed is a local endpoint with its compiled rules (policy.Compile).
type Policed struct {
	HostIf string
	Rules  policy.Rules
}

// Set is a set of prefixes the policy rules match (an ipset of type
// hash:net, one address family), named after its content so that rules
// with the same peers share it, and a restarted plugin finds it.
type Set struct {
	Name     string
	V6       bool
	Prefixes []netip.Prefix
}

// DenyLogGroup is the NFLOG group of the denied flows (tartan policy log).
const DenyLogGroup = 84

// setName is a set's name: "tartan-" and a hash of its family and sorted
// prefixes (ipset names hold at most 31 characters).
func setName(v6 bool, ps []netip.Prefix) string {
	h := sha256.New()
	fmt.Fprintf(h, "v6=%v", v6)
	for _, p := range ps {
		fmt.Fprintf(h, " %s", p)
	}
	return "tartan-" + hex.EncodeToString(h.Sum(nil))[:16]
}

// policy renders the policy chains of one address family, the jumps to
// them, and the sets they match.
func (w *renderer) policy() {
	eps := slices.Clone(w.st.Policed)
	slices.SortFunc(eps, func(a, b Policed) int { return strings.Compare(a.HostIf, b.HostIf) })
	var egress, ingress []string
	for _, e := range eps {
		egress = append(egress, w.side(EgressChain, "-i", e.HostIf, "dst", e.Rules.Egress)...)
		ingress = append(ingress, w.side(IngressChain, "-o", e.HostIf, "src", e.Rules.Ingress)...)
	}
	if len(egress)+len(ingress) == 0 {
		return
	}
	// Replies of allowed connections, and what is related to them (ICMP
	// errors), pass.
	established := "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
	for _, c := range []struct {
		chain string
		rules *[]string
		add   []string
	}{{EgressChain, &w.r.Egress, egress}, {IngressChain, &w.r.Ingress, ingress}} {
		if len(c.add) == 0 {
			continue
		}
		*c.rules = append([]string{fmt.Sprintf("-A %s %s", c.chain, established)}, c.add...)
		w.r.Isolate = append(w.r.Isolate, fmt.Sprintf("-A %s -j %s", IsolateChain, c.chain))
	}
}

// side renders one direction of one endpoint: nothing when it is open;
// else a RETURN per allow of this family, then the denied flow logged and
// dropped. dir matches the interface (-i for egress, -o for ingress), peer
// which end a set matches (dst for egress, src for ingress).
func (w *renderer) side(chain, dir, ifname, peer string, s policy.Side) []string {
	if !s.Isolated {
		return nil
	}
	var out []string
	for _, a := range s.Allows {
		match, ok := w.allowMatch(a, peer)
		if !ok {
			continue
		}
		out = append(out, fmt.Sprintf("-A %s %s %s%s -j RETURN", chain, dir, ifname, match))
	}
	what := map[string]string{EgressChain: "egress", IngressChain: "ingress"}[chain]
	out = append(out,
		fmt.Sprintf(`-A %s %s %s -m conntrack --ctstate NEW -j NFLOG --nflog-group %d --nflog-prefix "tartan deny %s %s"`, chain, dir, ifname, DenyLogGroup, what, ifname),
		fmt.Sprintf("-A %s %s %s -j DROP", chain, dir, ifname))
	return out
}

// allowMatch is an allow's match in this family (false: it lets nothing
// of this family through: its peers are all of the other one).
func (w *renderer) allowMatch(a policy.Allow, peer string) (string, bool) {
	var b strings.Builder
	if !a.AnyPeer {
		var ps []netip.Prefix
		for _, p := range a.Peers {
			if p.Addr().Is6() == w.v6 {
				ps = append(ps, p)
			}
		}
		if len(ps) == 0 {
			return "", false
		}
		slices.SortFunc(ps, func(x, y netip.Prefix) int { return strings.Compare(x.String(), y.String()) })
		ps = slices.Compact(ps)
		name := setName(w.v6, ps)
		if !slices.ContainsFunc(w.r.Sets, func(s Set) bool { return s.Name == name }) {
			w.r.Sets = append(w.r.Sets, Set{Name: name, V6: w.v6, Prefixes: ps})
		}
		fmt.Fprintf(&b, " -m set --match-set %s %s", name, peer)
	}
	switch a.Protocol {
	case policy.Any:
	case policy.ICMP:
		if w.v6 {
			b.WriteString(" -p ipv6-icmp")
		} else {
			b.WriteString(" -p icmp")
		}
	default:
		fmt.Fprintf(&b, " -p %s -m %s", a.Protocol, a.Protocol)
		if !a.Ports.IsZero() {
			if a.Ports.First == a.Ports.Last {
				fmt.Fprintf(&b, " --dport %d", a.Ports.First)
			} else {
				fmt.Fprintf(&b, " --dport %d:%d", a.Ports.First, a.Ports.Last)
			}
		}
	}
	return b.String(), true
}
