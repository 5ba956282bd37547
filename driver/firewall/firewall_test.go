package firewall

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"
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
		Pools:    []Pool{{Pool: poolA, Device: "tartan.1"}, {Pool: poolB}, {Pool: poolI, Internal: true, Device: "tartan.3"}},
		Ports:    []Port{{Proto: "tcp", HostPort: 8080, IP: netip.MustParseAddr("10.244.0.9"), Port: 80}},
		Underlay: "eth1", Bridges: []string{"mybridge"}, VXLANPort: 8472,
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
	} {
		if got := decide(t, r, c.p); got != c.want {
			t.Errorf("%s: %s, want %s\n%s\n%s", c.name, got, c.want, strings.Join(r.Isolate, "\n"), strings.Join(r.Forward, "\n"))
		}
	}
}

// The VXLAN port admits the known peers only; while they are not known
// (nil) it stays open, so that a restarted plugin does not cut tunnels.
func TestVXLANPortPeers(t *testing.T) {
	st := testState()
	in := Render(st).Input
	if len(in) != 2 || !strings.Contains(in[0], "-s 192.0.2.20/32") || !strings.HasSuffix(in[1], "--dport 8472 -j DROP") {
		t.Fatalf("input rules:\n%s", strings.Join(in, "\n"))
	}
	st.Peers = nil
	if in := Render(st).Input; len(in) != 0 {
		t.Fatalf("peers unknown, yet input rules:\n%s", strings.Join(in, "\n"))
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
