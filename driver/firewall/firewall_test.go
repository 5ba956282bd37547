package firewall

import (
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/kernel"
)

// packet is what the rules match on.
type packet struct {
	in, out  string
	src, dst string
	state    string // NEW, ESTABLISHED or DNAT
	proto    string // tcp or udp ("" for neither)
	port     int
}

// verdict runs a packet through rendered TARTAN-FORWARD rules, the way
// iptables does for the matches tartan uses: the first matching rule's
// target, or RETURN at the end of the chain.
func verdict(t *testing.T, rules []string, p packet) string {
	t.Helper()
	for _, r := range rules {
		f := strings.Fields(r)
		match, target := true, ""
		for i := 2; i < len(f); i++ {
			neg := false
			if f[i] == "!" {
				neg, i = true, i+1
			}
			ok := true
			switch f[i] {
			case "-i", "-o":
				v := p.in
				if f[i] == "-o" {
					v = p.out
				}
				i++
				if strings.HasSuffix(f[i], "+") {
					ok = strings.HasPrefix(v, strings.TrimSuffix(f[i], "+"))
				} else {
					ok = v == f[i]
				}
			case "-s", "-d":
				v := p.src
				if f[i] == "-d" {
					v = p.dst
				}
				i++
				ok = netip.MustParsePrefix(f[i]).Contains(netip.MustParseAddr(v))
			case "-m":
				i++
				if f[i] == "tcp" || f[i] == "udp" {
					break
				}
				if f[i] == "conntrack" {
					i += 2
					ok = false
					for _, s := range strings.Split(f[i], ",") {
						ok = ok || s == p.state
					}
				}
			case "-p":
				i++
				ok = p.proto == f[i]
			case "--dport":
				i++
				ok = strconv.Itoa(p.port) == f[i]
			case "-j":
				i++
				target = f[i]
			default:
				t.Fatalf("rule %q: the test does not know %s", r, f[i])
			}
			if ok == neg {
				match = false
			}
		}
		if match {
			return target
		}
	}
	return "RETURN"
}

// decide runs a forwarded packet through mangle's TARTAN-ISOLATE, then
// filter's TARTAN-FORWARD: DROP, ACCEPT, or RETURN (Docker's rules decide).
func decide(t *testing.T, r Rules, p packet) string {
	t.Helper()
	if v := verdict(t, r.Isolate, p); v == "DROP" {
		return v
	}
	return verdict(t, r.Forward, p)
}

var (
	poolA = netip.MustParsePrefix("10.244.0.0/16")
	poolB = netip.MustParsePrefix("10.245.0.0/16")
	poolI = netip.MustParsePrefix("10.246.0.0/16")
)

func testState() State {
	return State{
		Pools:    []Pool{{Pool: poolA, Device: "tartan.1"}, {Pool: poolB, Underlay: true}, {Pool: poolI, Internal: true, Device: "tartan.3"}},
		Ports:    []Port{{Proto: "tcp", HostPort: 8080, IP: netip.MustParseAddr("10.244.0.9"), Port: 80}},
		Underlay: "eth1", Bridges: []string{"mybridge"}, Uplinks: []string{"eth1", "br-lan"}, VXLANPort: 8472,
		Peers: []netip.Addr{netip.MustParseAddr("192.0.2.20")},
	}
}

// Isolation by ingress interface, from Docker's
// bridges both ways, and of the VXLAN port. Before the fix "-s <pool> -j
// ACCEPT" let a tartan container reach every port of a bridge container,
// and rules matched source addresses only.
func TestForwardIsolation(t *testing.T) {
	r := Render(testState())
	for _, c := range []struct {
		name string
		p    packet
		want string
	}{
		{"same network, same host", packet{in: "tn1", out: "tn2", src: "10.244.0.2", dst: "10.244.0.3", state: "NEW"}, "ACCEPT"},
		{"same network, from a peer's VXLAN", packet{in: "tartan.1", out: "tn2", src: "10.244.1.2", dst: "10.244.0.3", state: "NEW"}, "ACCEPT"},
		{"same network, host-gw peer", packet{in: "eth1", out: "tn2", src: "10.245.1.2", dst: "10.245.0.3", state: "NEW"}, "ACCEPT"},
		// Issue 24, audit M3: a vxlan pool's peers send through its device,
		// never on the underlay; internal or not.
		{"vxlan pool injected on the underlay", packet{in: "eth1", out: "tn2", src: "10.244.1.2", dst: "10.244.0.3", state: "NEW"}, "DROP"},
		{"internal vxlan pool injected on the underlay", packet{in: "eth1", out: "tn2", src: "10.246.1.2", dst: "10.246.0.3", state: "NEW"}, "DROP"},
		{"vxlan pool from another network's device", packet{in: "tartan.3", out: "tn2", src: "10.244.1.2", dst: "10.244.0.3", state: "NEW"}, "DROP"},
		{"other tartan network", packet{in: "tn1", out: "tn4", src: "10.244.0.2", dst: "10.245.0.3", state: "NEW"}, "DROP"},
		{"VXLAN device carrying another pool", packet{in: "tartan.1", out: "tn4", src: "10.246.0.2", dst: "10.246.0.3", state: "NEW"}, "DROP"},
		{"to Docker's bridge", packet{in: "tn1", out: "docker0", src: "10.244.0.2", dst: "172.17.0.2", state: "NEW"}, "DROP"},
		{"to a user bridge", packet{in: "tn1", out: "br-0123", src: "10.244.0.2", dst: "172.18.0.2", state: "NEW"}, "DROP"},
		{"to a bridge with its own name", packet{in: "tn1", out: "mybridge", src: "10.244.0.2", dst: "172.19.0.2", state: "NEW"}, "DROP"},
		{"to a bridge's published port, as from a bridge", packet{in: "tn1", out: "docker0", src: "10.244.0.2", dst: "172.17.0.2", state: "DNAT"}, "ACCEPT"},
		{"from Docker's bridge", packet{in: "docker0", out: "tn1", src: "172.17.0.2", dst: "10.244.0.2", state: "NEW"}, "DROP"},
		{"from a bridge, spoofed pool source", packet{in: "docker0", out: "tn1", src: "10.244.0.7", dst: "10.244.0.2", state: "NEW"}, "DROP"},
		{"published port through DNAT", packet{in: "eth0", out: "tn1", src: "198.51.100.1", dst: "10.244.0.9", state: "DNAT", proto: "tcp", port: 80}, "ACCEPT"},
		{"published port at the container's own address", packet{in: "tn5", out: "tn1", src: "10.245.0.2", dst: "10.244.0.9", state: "NEW", proto: "tcp", port: 80}, "DROP"},
		{"reply", packet{in: "eth0", out: "tn1", src: "198.51.100.1", dst: "10.244.0.2", state: "ESTABLISHED"}, "ACCEPT"},
		{"to the outside", packet{in: "tn1", out: "eth0", src: "10.244.0.2", dst: "198.51.100.1", state: "NEW"}, "ACCEPT"},
		{"internal to the outside", packet{in: "tn1", out: "eth0", src: "10.246.0.2", dst: "198.51.100.1", state: "NEW"}, "DROP"},
		{"internal within", packet{in: "tn1", out: "tn2", src: "10.246.0.2", dst: "10.246.0.3", state: "NEW"}, "ACCEPT"},
		{"outside in", packet{in: "eth0", out: "tn1", src: "198.51.100.1", dst: "10.244.0.2", state: "NEW"}, "DROP"},
		{"container to a peer's VXLAN port", packet{in: "tn1", out: "eth1", src: "10.244.0.2", dst: "192.0.2.20", state: "NEW", proto: "udp", port: 8472}, "DROP"},
		{"bridge container to a peer's VXLAN port", packet{in: "docker0", out: "eth1", src: "172.17.0.2", dst: "192.0.2.20", state: "NEW", proto: "udp", port: 8472}, "DROP"},
		{"Docker's own traffic is Docker's", packet{in: "docker0", out: "eth0", src: "172.17.0.2", dst: "198.51.100.1", state: "NEW"}, "RETURN"},
		// Issue 24, audit M5: a bridge that carries the host's uplink is
		// not one of Docker's, whatever its name.
		{"to the outside through a bridged uplink", packet{in: "tn1", out: "br-lan", src: "10.244.0.2", dst: "198.51.100.1", state: "NEW"}, "ACCEPT"},
	} {
		if got := decide(t, r, c.p); got != c.want {
			t.Errorf("%s: %s, want %s\n%s\n%s", c.name, got, c.want, strings.Join(r.Isolate, "\n"), strings.Join(r.Forward, "\n"))
		}
	}
}

// A WireGuard pool takes other hosts' traffic from its tunnel only: a
// packet in clear on the underlay or a VXLAN device with a source in the
// pool is a forgery, also when it claims an established connection.
// NAT'd replies and published ports from the outside still pass, and the
// other pools keep the underlay (host-gw) and their VXLAN device.
func TestTunnelIngress(t *testing.T) {
	st := testState()
	poolW := netip.MustParsePrefix("10.247.0.0/16")
	st.Pools = append(st.Pools, Pool{Pool: poolW, Tunnel: "tartan-wg"})
	st.Ports = append(st.Ports, Port{Proto: "tcp", HostPort: 8081, IP: netip.MustParseAddr("10.247.0.9"), Port: 80})
	r := Render(st)
	for _, c := range []struct {
		name string
		p    packet
		want string
	}{
		{"from a peer through the tunnel", packet{in: "tartan-wg", out: "tn2", src: "10.247.1.2", dst: "10.247.0.3", state: "NEW"}, "ACCEPT"},
		{"same host", packet{in: "tn1", out: "tn2", src: "10.247.0.2", dst: "10.247.0.3", state: "NEW"}, "ACCEPT"},
		{"to a peer through the tunnel", packet{in: "tn1", out: "tartan-wg", src: "10.247.0.2", dst: "10.247.1.3", state: "NEW"}, "ACCEPT"},
		{"forged on the underlay", packet{in: "eth1", out: "tn2", src: "10.247.1.2", dst: "10.247.0.3", state: "NEW"}, "DROP"},
		{"forged on the underlay, established", packet{in: "eth1", out: "tn2", src: "10.247.1.2", dst: "10.247.0.3", state: "ESTABLISHED"}, "DROP"},
		{"forged on a VXLAN device", packet{in: "tartan.1", out: "tn2", src: "10.247.1.2", dst: "10.247.0.3", state: "NEW"}, "DROP"},
		{"reply from the outside", packet{in: "eth1", out: "tn1", src: "198.51.100.1", dst: "10.247.0.2", state: "ESTABLISHED"}, "ACCEPT"},
		{"published port", packet{in: "eth1", out: "tn1", src: "198.51.100.1", dst: "10.247.0.9", state: "DNAT", proto: "tcp", port: 80}, "ACCEPT"},
		{"host-gw pool still takes the underlay", packet{in: "eth1", out: "tn2", src: "10.245.1.2", dst: "10.245.0.3", state: "NEW"}, "ACCEPT"},
		{"vxlan pool still takes its device", packet{in: "tartan.1", out: "tn2", src: "10.244.1.2", dst: "10.244.0.3", state: "NEW"}, "ACCEPT"},
		{"the tunnel does not carry a vxlan pool", packet{in: "tartan-wg", out: "tn2", src: "10.244.1.2", dst: "10.244.0.3", state: "NEW"}, "DROP"},
	} {
		if got := decide(t, r, c.p); got != c.want {
			t.Errorf("%s: %s, want %s\n%s\n%s", c.name, got, c.want, strings.Join(r.Isolate, "\n"), strings.Join(r.Forward, "\n"))
		}
	}
}

// The VXLAN port admits the known peers only, and nobody while none is
// known (issue 24, audit M2: it was left open until every plan came, after
// every plugin start).
func TestVXLANPortPeers(t *testing.T) {
	st := testState()
	in := Render(st).Input
	if len(in) != 2 || !strings.Contains(in[0], "-s 192.0.2.20/32") || !strings.HasSuffix(in[1], "--dport 8472 -j DROP") {
		t.Fatalf("input rules:\n%s", strings.Join(in, "\n"))
	}
	st.Peers = nil
	if in := Render(st).Input; len(in) != 1 || !strings.HasSuffix(in[0], "--dport 8472 -j DROP") {
		t.Fatalf("peers unknown: want the port closed:\n%s", strings.Join(in, "\n"))
	}
	st.Peers = []netip.Addr{}
	if in := Render(st).Input; len(in) != 1 {
		t.Fatalf("no peers: want the port closed:\n%s", strings.Join(in, "\n"))
	}
	raw := Render(st).Raw
	if !strings.Contains(strings.Join(raw, "\n"), "--dport 8472 -m addrtype --dst-type LOCAL -j NOTRACK") {
		t.Fatalf("NOTRACK must be limited to this host's own tunnels:\n%s", strings.Join(raw, "\n"))
	}
}

// No rule ever accepts by source alone, and without networks there are no
// rules at all.
func TestNoSourceOnlyAccept(t *testing.T) {
	rules := Render(testState())
	for _, r := range rules.Forward {
		if !strings.HasSuffix(r, "-j ACCEPT") {
			t.Errorf("filter rules only accept (isolation is mangle's): %s", r)
		}
		if strings.HasSuffix(r, "-j ACCEPT") && !strings.Contains(r, "-i ") && !strings.Contains(r, "--ctstate") {
			t.Errorf("accept without an ingress interface or connection state: %s", r)
		}
	}
	for _, r := range rules.Isolate {
		if strings.HasSuffix(r, "-j ACCEPT") {
			t.Errorf("mangle never accepts (DOCKER-USER must see tartan traffic): %s", r)
		}
	}
	if r := Render(State{VXLANPort: 8472}); len(r.Forward)+len(r.Isolate)+len(r.Input)+len(r.Postrouting) != 0 {
		t.Fatalf("rules without networks: %+v", r)
	}
}

// Rules come out in one order whatever the order of the input (before the fix
// the DNAT winner flipped with map order).
func TestDeterministic(t *testing.T) {
	st := testState()
	st.Ports = append(st.Ports, Port{Proto: "tcp", HostPort: 80, IP: netip.MustParseAddr("10.245.0.4"), Port: 80})
	a := Render(st)
	st.Ports[0], st.Ports[1] = st.Ports[1], st.Ports[0]
	st.Pools[0], st.Pools[2] = st.Pools[2], st.Pools[0]
	b := Render(st)
	if strings.Join(a.DNAT, "\n") != strings.Join(b.DNAT, "\n") || strings.Join(a.Forward, "\n") != strings.Join(b.Forward, "\n") ||
		strings.Join(a.Isolate, "\n") != strings.Join(b.Isolate, "\n") {
		t.Fatal("rule order depends on input order")
	}
}

// tartan's FORWARD jump goes right below DOCKER-USER, so operators' rules
// there hold for tartan traffic.
func TestJumpPosition(t *testing.T) {
	docker := "-P FORWARD DROP\n-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n-A FORWARD -o docker0 -j DOCKER"
	if p := JumpPosition(docker, "DOCKER-USER"); p != 2 {
		t.Fatalf("below DOCKER-USER: %d", p)
	}
	if p := JumpPosition("-P FORWARD ACCEPT", "DOCKER-USER"); p != 1 {
		t.Fatalf("without Docker: %d", p)
	}
	withTartan := "-P FORWARD DROP\n-A FORWARD -j TARTAN-FORWARD\n-A FORWARD -j DOCKER-USER"
	if got := rulePositions(withTartan, "-A FORWARD -j TARTAN-FORWARD"); len(got) != 1 || got[0] != 1 {
		t.Fatalf("positions: %v", got)
	}
}

var (
	pool6A = netip.MustParsePrefix("fd00:a::/64")
	pool6B = netip.MustParsePrefix("fd00:b::/64")
	pool6I = netip.MustParsePrefix("fd00:c::/64")
)

// dualStackState is testState with an IPv6 pool beside each IPv4 one, as
// dual-stack networks contribute them.
func dualStackState() State {
	st := testState()
	st.Pools = append(st.Pools, Pool{Pool: pool6A, Device: "tartan.1", NAT66: true}, Pool{Pool: pool6B, Underlay: true}, Pool{Pool: pool6I, Internal: true, Device: "tartan.3"})
	return st
}

// addresses returns the prefixes the rules match on (-s, -d).
func addresses(t *testing.T, r Rules) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, c := range layout(r) {
		for _, rule := range c.rules {
			f := strings.Fields(rule)
			for i := 0; i+1 < len(f); i++ {
				if f[i] == "-s" || f[i] == "-d" {
					out = append(out, netip.MustParsePrefix(f[i+1]))
				}
			}
		}
	}
	return out
}

// Each family's rules come from its own pools: IPv6 pools change nothing
// in the IPv4 rules, and the IPv6 rules name no IPv4 address.
func TestDualStackFamilies(t *testing.T) {
	st := dualStackState()
	v4, v6 := Render(st), Render6(st)
	if !reflect.DeepEqual(v4, Render(testState())) {
		t.Fatalf("IPv6 pools changed the IPv4 rules:\n%s", strings.Join(v4.Isolate, "\n"))
	}
	for _, p := range addresses(t, v4) {
		if !p.Addr().Is4() {
			t.Errorf("IPv6 prefix %s in the IPv4 rules", p)
		}
	}
	for _, p := range addresses(t, v6) {
		if !p.Addr().Is6() {
			t.Errorf("IPv4 prefix %s in the IPv6 rules", p)
		}
	}
	// The VXLAN port (the underlay is IPv4) and published ports are IPv4's.
	if len(v6.Input)+len(v6.DNAT)+len(v6.RawOutput) != 0 || len(v6.Raw) != 1 {
		t.Fatalf("IPv6 input, DNAT or raw rules: %+v", v6)
	}
	for _, c := range layout(v6) {
		for _, r := range c.rules {
			if strings.Contains(r, "8472") || strings.Contains(r, "--dport") {
				t.Errorf("port rule in the IPv6 rules: %s", r)
			}
		}
	}
	if v6.Raw[0] != "-A "+RawChain+" -i tn+ -m rpfilter --invert -j DROP" {
		t.Errorf("IPv6 raw rule: %s", v6.Raw[0])
	}
	if r := Render6(testState()); len(r.Forward)+len(r.Isolate)+len(r.Postrouting)+len(r.Raw) != 0 {
		t.Fatalf("IPv6 rules without IPv6 pools: %+v", r)
	}
	if has6(testState()) || !has6(dualStackState()) {
		t.Fatal("has6")
	}
}

// The IPv6 rules isolate as the IPv4 ones do.
func TestIPv6Isolation(t *testing.T) {
	r := Render6(dualStackState())
	for _, c := range []struct {
		name string
		p    packet
		want string
	}{
		{"same network, same host", packet{in: "tn1", out: "tn2", src: "fd00:a::2", dst: "fd00:a::3", state: "NEW"}, "ACCEPT"},
		{"same network, from a peer's VXLAN", packet{in: "tartan.1", out: "tn2", src: "fd00:a::1:2", dst: "fd00:a::3", state: "NEW"}, "ACCEPT"},
		{"same network, host-gw peer", packet{in: "eth1", out: "tn2", src: "fd00:b::1:2", dst: "fd00:b::3", state: "NEW"}, "ACCEPT"},
		{"other tartan network", packet{in: "tn1", out: "tn4", src: "fd00:a::2", dst: "fd00:b::3", state: "NEW"}, "DROP"},
		{"VXLAN device carrying another pool", packet{in: "tartan.1", out: "tn4", src: "fd00:c::2", dst: "fd00:c::3", state: "NEW"}, "DROP"},
		{"to Docker's bridge", packet{in: "tn1", out: "docker0", src: "fd00:a::2", dst: "fd00:17::2", state: "NEW"}, "DROP"},
		{"to a user bridge", packet{in: "tn1", out: "br-0123", src: "fd00:a::2", dst: "fd00:18::2", state: "NEW"}, "DROP"},
		{"to a bridge with its own name", packet{in: "tn1", out: "mybridge", src: "fd00:a::2", dst: "fd00:19::2", state: "NEW"}, "DROP"},
		{"from Docker's bridge", packet{in: "docker0", out: "tn1", src: "fd00:17::2", dst: "fd00:a::2", state: "NEW"}, "DROP"},
		{"from a bridge, spoofed pool source", packet{in: "docker0", out: "tn1", src: "fd00:a::7", dst: "fd00:a::2", state: "NEW"}, "DROP"},
		{"reply", packet{in: "eth0", out: "tn1", src: "2001:db8::1", dst: "fd00:a::2", state: "ESTABLISHED"}, "ACCEPT"},
		{"to the outside", packet{in: "tn1", out: "eth0", src: "fd00:a::2", dst: "2001:db8::1", state: "NEW"}, "ACCEPT"},
		{"internal to the outside", packet{in: "tn1", out: "eth0", src: "fd00:c::2", dst: "2001:db8::1", state: "NEW"}, "DROP"},
		{"internal within", packet{in: "tn1", out: "tn2", src: "fd00:c::2", dst: "fd00:c::3", state: "NEW"}, "ACCEPT"},
		{"outside in", packet{in: "eth0", out: "tn1", src: "2001:db8::1", dst: "fd00:a::2", state: "NEW"}, "DROP"},
		{"Docker's own traffic is Docker's", packet{in: "docker0", out: "eth0", src: "fd00:17::2", dst: "2001:db8::1", state: "NEW"}, "RETURN"},
	} {
		if got := decide(t, r, c.p); got != c.want {
			t.Errorf("%s: %s, want %s\n%s\n%s", c.name, got, c.want, strings.Join(r.Isolate, "\n"), strings.Join(r.Forward, "\n"))
		}
	}
	all := strings.Join(r.Isolate, "\n")
	for _, want := range []string{
		"-A " + IsolateChain + " -i tartan.1 ! -s fd00:a::/64 -j DROP",
		"-A " + IsolateChain + " -i tartan.3 ! -s fd00:c::/64 -j DROP",
		"-A " + IsolateChain + " -s fd00:c::/64 -j DROP",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no %q in\n%s", want, all)
		}
	}
	for _, p := range []netip.Prefix{pool6A, pool6B} {
		if strings.Contains(all+"\n", "-A "+IsolateChain+" -s "+p.String()+" -j DROP\n") {
			t.Errorf("%s is not internal, yet cut off:\n%s", p, all)
		}
	}
}

// IPv6 pools are masqueraded only with NAT66, and never when internal;
// NAT66 changes nothing for IPv4 pools.
func TestNAT66(t *testing.T) {
	masq := func(p netip.Prefix) string {
		return "-A " + PostroutingChain + " -s " + p.String() + " ! -d " + p.String() + " -j MASQUERADE"
	}
	st := State{Pools: []Pool{{Pool: pool6A}}}
	if r := Render6(st); len(r.Postrouting) != 0 || len(r.Forward) == 0 {
		t.Fatalf("NAT66 off: %+v", r)
	}
	st.Pools[0].NAT66 = true
	if r := Render6(st); len(r.Postrouting) != 1 || r.Postrouting[0] != masq(pool6A) {
		t.Fatalf("NAT66 on: %q", r.Postrouting)
	}
	st.Pools[0].Internal = true
	if r := Render6(st); len(r.Postrouting) != 0 {
		t.Fatalf("NAT66 on an internal pool: %q", r.Postrouting)
	}
	st = State{Pools: []Pool{{Pool: poolA}, {Pool: poolI, Internal: true, NAT66: true}}}
	if r := Render(st); len(r.Postrouting) != 1 || r.Postrouting[0] != masq(poolA) {
		t.Fatalf("IPv4 masquerade follows Internal alone: %q", r.Postrouting)
	}
}

// The IPv6 nat OUTPUT jump leaves ::1 alone as the IPv4 one does 127/8;
// the other jumps are the same.
func TestJumpsPerFamily(t *testing.T) {
	j4, j6 := jumpsFor(false), jumpsFor(true)
	if len(j4) != len(j6) {
		t.Fatal("jumps differ in number")
	}
	for i := range j4 {
		s4, s6 := strings.Join(j4[i].spec, " "), strings.Join(j6[i].spec, " ")
		if j4[i].builtin == "OUTPUT" && j4[i].table == "nat" {
			if !strings.Contains(s4, "! -d 127.0.0.0/8 ") || !strings.Contains(s6, "! -d ::1/128 ") {
				t.Errorf("nat OUTPUT: %q, %q", s4, s6)
			}
		} else if s4 != s6 || j4[i].after != j6[i].after {
			t.Errorf("%s %s: %q, %q", j4[i].table, j4[i].builtin, s4, s6)
		}
	}
	for v4, v6 := range map[string]string{"iptables-nft": "ip6tables-nft", "iptables-legacy": "ip6tables-legacy", "iptables": "ip6tables"} {
		if got := ip6Of(v4); got != v6 {
			t.Errorf("ip6Of(%s) = %s", v4, got)
		}
	}
}

// The interface patterns are those of the names driver/kernel gives.
func TestInterfacePatterns(t *testing.T) {
	if want := kernel.EndpointPrefix + "+"; endpointIfs != want {
		t.Errorf("endpointIfs = %q, want %q", endpointIfs, want)
	}
	if want := kernel.VXLANPrefix + "+"; vxlanIfs != want {
		t.Errorf("vxlanIfs = %q, want %q", vxlanIfs, want)
	}
}

// An announced (bgp) pool takes any address from the underlay, as the
// fabric routes the outside to it, and leaves unmasqueraded; internal, it
// stays closed to the outside. The other pools keep their rules.
func TestAnnouncedPool(t *testing.T) {
	st := testState()
	poolG := netip.MustParsePrefix("10.248.0.0/16")
	poolGI := netip.MustParsePrefix("10.249.0.0/16")
	st.Pools = append(st.Pools, Pool{Pool: poolG, Underlay: true, Announced: true}, Pool{Pool: poolGI, Underlay: true, Announced: true, Internal: true})
	r := Render(st)
	for _, c := range []struct {
		name string
		p    packet
		want string
	}{
		{"client of the fabric in", packet{in: "eth1", out: "tn2", src: "10.96.0.2", dst: "10.248.0.3", state: "NEW"}, "ACCEPT"},
		{"another host's container", packet{in: "eth1", out: "tn2", src: "10.248.1.2", dst: "10.248.0.3", state: "NEW"}, "ACCEPT"},
		{"out to the fabric", packet{in: "tn2", out: "eth1", src: "10.248.0.3", dst: "10.96.0.2", state: "NEW"}, "ACCEPT"},
		{"internal: the outside stays out", packet{in: "eth1", out: "tn2", src: "10.96.0.2", dst: "10.249.0.3", state: "NEW"}, "DROP"},
		{"internal: its own hosts' containers in", packet{in: "eth1", out: "tn2", src: "10.249.1.2", dst: "10.249.0.3", state: "NEW"}, "ACCEPT"},
		{"from another interface than the underlay", packet{in: "eth0", out: "tn2", src: "10.96.0.2", dst: "10.248.0.3", state: "NEW"}, "DROP"},
		{"host-gw pool: the outside stays out", packet{in: "eth1", out: "tn2", src: "10.96.0.2", dst: "10.245.0.3", state: "NEW"}, "DROP"},
	} {
		if got := decide(t, r, c.p); got != c.want {
			t.Errorf("%s: %s, want %s\n%s\n%s", c.name, got, c.want, strings.Join(r.Isolate, "\n"), strings.Join(r.Forward, "\n"))
		}
	}
	for _, rule := range r.Postrouting {
		if strings.Contains(rule, poolG.String()) || strings.Contains(rule, poolGI.String()) {
			t.Errorf("an announced pool is masqueraded: %s", rule)
		}
	}
	if !slices.ContainsFunc(r.Postrouting, func(s string) bool { return strings.Contains(s, "-s "+poolB.String()) }) {
		t.Errorf("the host-gw pool is no longer masqueraded: %q", r.Postrouting)
	}
}
