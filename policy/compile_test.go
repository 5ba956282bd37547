package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestCompileAgrees: for random policies over a random cluster, what each
// endpoint's compiled rules let through is what Evaluate decides, flow by
// flow and direction by direction: the kernel programs compiled from
// Rules enforce the semantics Evaluate (and tartan policy explain) states.
func TestCompileAgrees(t *testing.T) {
	// A network is named by its IPv4 subnet.
	nets := []string{"10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24", "10.4.0.0/24"}
	pools := map[string][]netip.Prefix{
		nets[0]: {netip.MustParsePrefix(nets[0]), netip.MustParsePrefix("fd00:1::/64")},
		nets[1]: {netip.MustParsePrefix(nets[1])},
		nets[2]: {netip.MustParsePrefix(nets[2])},
		nets[3]: {netip.MustParsePrefix(nets[3])},
	}
	modes := map[string]Mode{nets[0]: ModeAllow, nets[1]: ModeAllow, nets[2]: ModeIsolated, nets[3]: ModeDefaultDeny}
	values := map[string][]string{"app": {"web", "api", "db"}, "tier": {"front", "back"}, "env": {"prod"}}
	keys := []string{"app", "tier", "env"}
	outside := []string{"192.0.2.7", "192.0.2.200", "203.0.113.9", "fd00:99::5"}
	ports := []uint16{22, 80, 443, 5432, 8080}
	protos := []string{TCP, UDP, ICMP}

	counts := map[string]int{}
	for seed := uint64(1); seed <= 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 7))
		pick := func(n int) int { return r.IntN(n) }
		labels := func() map[string]string {
			l := map[string]string{}
			for _, k := range keys {
				if pick(3) > 0 {
					l[k] = values[k][pick(len(values[k]))]
				}
			}
			return l
		}
		var view View
		view.Pools = pools
		for i := 0; i < 12; i++ {
			k := pick(len(nets))
			n := nets[k]
			var addr netip.Addr
			if k == 0 && pick(3) == 0 {
				addr = netip.MustParseAddr(fmt.Sprintf("fd00:1::%x", i+2))
			} else {
				addr = netip.AddrFrom4([4]byte{10, byte(k + 1), 0, byte(i + 2)})
			}
			view.Endpoints = append(view.Endpoints, Endpoint{Addr: addr, Network: n, Mode: modes[n], Labels: labels()})
		}
		selector := func() Selector {
			var s Selector
			switch pick(4) {
			case 0:
			case 1:
				k := keys[pick(len(keys))]
				s.Labels = map[string]string{k: values[k][pick(len(values[k]))]}
			case 2:
				k := keys[pick(len(keys))]
				op := []string{OpIn, OpNotIn}[pick(2)]
				s.Match = []Requirement{{Key: k, Op: op, Values: []string{values[k][pick(len(values[k]))]}}}
			case 3:
				s.Match = []Requirement{{Key: keys[pick(len(keys))], Op: []string{OpExists, OpNotExists}[pick(2)]}}
			}
			return s
		}
		peer := func() Peer {
			switch pick(5) {
			case 0:
				s := selector()
				return Peer{Selector: &s}
			case 1:
				return Peer{Network: nets[pick(len(nets))]}
			case 2:
				s := selector()
				return Peer{Selector: &s, Network: nets[pick(len(nets))]}
			case 3:
				return Peer{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25"}}
			}
			return Peer{CIDR: []string{"10.0.0.0/8", "fd00::/16", "0.0.0.0/0"}[pick(3)]}
		}
		rule := func(d Direction) Rule {
			var rl Rule
			for range pick(3) {
				if d == Ingress {
					rl.From = append(rl.From, peer())
				} else {
					rl.To = append(rl.To, peer())
				}
			}
			for range pick(3) {
				switch pick(4) {
				case 0:
					rl.Ports = append(rl.Ports, Port{Protocol: ICMP})
				case 1:
					rl.Ports = append(rl.Ports, Port{Protocol: UDP, Port: PortRange{First: 80, Last: 443}})
				default:
					p := ports[pick(len(ports))]
					rl.Ports = append(rl.Ports, Port{Protocol: TCP, Port: PortRange{First: p, Last: p}})
				}
			}
			return rl
		}
		var policies []Policy
		for i := range 1 + pick(4) {
			p := Policy{Name: fmt.Sprintf("p%d", i), Selector: selector()}
			if pick(3) == 0 {
				p.Networks = []string{nets[pick(len(nets))]}
			}
			switch pick(3) {
			case 0:
				p.Types = []Direction{Egress}
			case 1:
				p.Types = []Direction{Ingress, Egress}
			}
			for range pick(3) {
				if p.Isolates(Ingress) {
					p.Ingress = append(p.Ingress, rule(Ingress))
				}
			}
			for range pick(3) {
				if len(p.Types) > 0 && p.Isolates(Egress) {
					p.Egress = append(p.Egress, rule(Egress))
				}
			}
			if err := p.Validate(); err != nil {
				t.Fatalf("seed %d: generated an invalid policy: %v", seed, err)
			}
			policies = append(policies, p)
		}
		all := append([]Endpoint(nil), view.Endpoints...)
		for _, o := range outside {
			all = append(all, Endpoint{Addr: netip.MustParseAddr(o)})
		}
		compiled := map[netip.Addr]Rules{}
		for _, e := range view.Endpoints {
			compiled[e.Addr] = Compile(policies, e, view)
		}
		for range 200 {
			src, dst := all[pick(len(all))], all[pick(len(all))]
			if !src.InCluster() && !dst.InCluster() {
				continue
			}
			f := Flow{Src: src, Dst: dst, Protocol: protos[pick(len(protos))], Port: ports[pick(len(ports))]}
			if f.Protocol == ICMP {
				f.Port = 0
			}
			want := Evaluate(policies, f)
			egress, ingress := true, true
			if src.InCluster() {
				egress = compiled[src.Addr].Egress.Passes(dst.Addr, f.Protocol, f.Port)
			}
			if dst.InCluster() {
				ingress = compiled[dst.Addr].Ingress.Passes(src.Addr, f.Protocol, f.Port)
			}
			counts[fmt.Sprintf("egress %v", egress)]++
			counts[fmt.Sprintf("ingress %v", ingress)]++
			if egress != want.Egress.Allowed || ingress != want.Ingress.Allowed {
				t.Fatalf("seed %d: %s (%s %v) -> %s (%s %v) %s/%d: compiled egress %v ingress %v, Evaluate %+v\npolicies %+v",
					seed, src.Addr, src.Network, src.Labels, dst.Addr, dst.Network, dst.Labels, f.Protocol, f.Port, egress, ingress, want, policies)
			}
		}
	}
	// The cases are not all one way: the generator reaches denials and
	// passes in both directions.
	t.Logf("flows compared: %v", counts)
	for _, k := range []string{"egress true", "egress false", "ingress true", "ingress false"} {
		if counts[k] < 1000 {
			t.Errorf("only %d flows with %s: the generator hardly tries it", counts[k], k)
		}
	}
}

func TestSubtract(t *testing.T) {
	got := subtract([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, netip.MustParsePrefix("10.1.2.0/24"))
	if len(got) != 16 {
		t.Fatalf("10.0.0.0/8 less a /24: %d prefixes %v, want 16", len(got), got)
	}
	for _, a := range []string{"10.0.0.1", "10.1.1.255", "10.1.3.0", "10.255.255.255"} {
		in := false
		for _, p := range got {
			in = in || p.Contains(netip.MustParseAddr(a))
		}
		if !in {
			t.Errorf("%s was lost", a)
		}
	}
	for _, p := range got {
		if p.Overlaps(netip.MustParsePrefix("10.1.2.0/24")) {
			t.Errorf("%s overlaps what was subtracted", p)
		}
	}
	if c := complement([]netip.Prefix{netip.MustParsePrefix("fd00::/64")}); len(c) != 65 {
		t.Errorf("the complement of one IPv6 /64: %d prefixes, want 64 + the IPv4 space", len(c))
	}
}
