package driver

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/errdefs"
)

// TestPortRulesOrder: the port rules come out in endpoint ID order, then
// port order, every time. Before the fix they followed the endpoint
// map's order, so the owner of a contested host port (the first DNAT rule)
// changed between rewrites.
func TestPortRulesOrder(t *testing.T) {
	eps := map[string]localEndpoint{}
	for i := 9; i >= 0; i-- {
		id := fmt.Sprintf("%02d%s", i, strings.Repeat("e", 62))
		eps[id] = localEndpoint{ID: id, IP: fmt.Sprintf("10.244.0.%d", i+2), Ports: []published{
			{Proto: "udp", HostPort: 8080, Port: 80}, {Proto: "tcp", HostPort: 9090, Port: 90}, {Proto: "tcp", HostPort: 8080, Port: 80},
		}}
	}
	first := portRules(eps)
	if len(first) != 30 {
		t.Fatalf("%d rules, want 30", len(first))
	}
	for i, want := range []firewall.Port{
		{Proto: "tcp", HostPort: 8080, IP: netip.MustParseAddr("10.244.0.2"), Port: 80},
		{Proto: "udp", HostPort: 8080, IP: netip.MustParseAddr("10.244.0.2"), Port: 80},
		{Proto: "tcp", HostPort: 9090, IP: netip.MustParseAddr("10.244.0.2"), Port: 90},
		{Proto: "tcp", HostPort: 8080, IP: netip.MustParseAddr("10.244.0.3"), Port: 80},
	} {
		if first[i] != want {
			t.Fatalf("rule %d is %+v, want %+v", i, first[i], want)
		}
	}
	for range 50 {
		if got := portRules(eps); !slices.Equal(got, first) {
			t.Fatalf("order changed between calls:\n%v\n%v", first, got)
		}
	}
}

// TestPublishedConflict: a host port another endpoint publishes (same
// protocol and port, overlapping host address) is refused, naming the
// holder. Before the fix both endpoints got their DNAT rule.
func TestPublishedConflict(t *testing.T) {
	holder := "abc123def4567890"
	eps := map[string]localEndpoint{
		holder:     {ID: holder, Ports: []published{{Proto: "tcp", HostPort: 8080, Port: 80}}},
		"other1":   {ID: "other1", Ports: []published{{Proto: "tcp", HostIP: "10.0.0.1", HostPort: 9000, Port: 90}}},
		"me000000": {ID: "me000000", Ports: []published{{Proto: "tcp", HostPort: 7000, Port: 70}}},
	}
	for _, c := range []struct {
		ports []published
		err   error
		words []string
	}{
		{[]published{{Proto: "tcp", HostPort: 8080, Port: 81}}, errdefs.ErrInUse, []string{"port 8080/tcp is already published by endpoint abc123def456 on this host: pick another host port"}},
		{[]published{{Proto: "tcp", HostIP: "10.0.0.2", HostPort: 8080, Port: 81}}, errdefs.ErrInUse, []string{"port 8080/tcp", "abc123def456"}},
		{[]published{{Proto: "tcp", HostPort: 9000, Port: 90}}, errdefs.ErrInUse, []string{"port 10.0.0.1:9000/tcp", "other1"}},
		{[]published{{Proto: "tcp", HostIP: "10.0.0.1", HostPort: 9000, Port: 90}}, errdefs.ErrInUse, []string{"other1"}},
		{[]published{{Proto: "tcp", HostPort: 5000, Port: 80}, {Proto: "tcp", HostPort: 5000, Port: 81}}, errdefs.ErrInvalid, []string{"port 5000/tcp is published twice", "80 and 81"}},
		// No conflict: another protocol, another address, the endpoint's own port, an exact repeat.
		{[]published{{Proto: "udp", HostPort: 8080, Port: 80}}, nil, nil},
		{[]published{{Proto: "tcp", HostIP: "10.0.0.2", HostPort: 9000, Port: 90}}, nil, nil},
		{[]published{{Proto: "tcp", HostPort: 7000, Port: 71}}, nil, nil},
		{[]published{{Proto: "tcp", HostPort: 6000, Port: 60}, {Proto: "tcp", HostPort: 6000, Port: 60}}, nil, nil},
	} {
		err := publishedConflict("me000000", c.ports, eps)
		if c.err == nil {
			if err != nil {
				t.Errorf("%v: %v", c.ports, err)
			}
			continue
		}
		if !errors.Is(err, c.err) {
			t.Errorf("%v: got %v, want %v", c.ports, err, c.err)
			continue
		}
		for _, w := range c.words {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: %q does not say %q", c.ports, err, w)
			}
		}
	}
}

// TestListenerConflict: a port a host process holds is refused. Before the
// fix -p 22:22 silently took the host's SSH from external clients.
func TestListenerConflict(t *testing.T) {
	s := func(proto, ap string) kernel.Socket {
		a := netip.MustParseAddrPort(ap)
		return kernel.Socket{Proto: proto, Addr: a.Addr(), Port: int(a.Port())}
	}
	socks := []kernel.Socket{
		s("tcp", "0.0.0.0:22"), s("tcp", "[::]:2222"), s("tcp", "192.168.1.10:8080"), s("tcp", "[::ffff:192.168.1.10]:8081"),
		s("tcp", "[2001:db8::1]:8082"), s("udp", "0.0.0.0:5353"), s("tcp", "127.0.0.1:6000"),
	}
	for _, c := range []struct {
		p    published
		want string // "" for no conflict
	}{
		{published{Proto: "tcp", HostPort: 22, Port: 22}, "port 22/tcp is in use on this host (a process listens on 0.0.0.0:22/tcp): pick another host port"},
		{published{Proto: "tcp", HostIP: "10.1.1.1", HostPort: 22, Port: 22}, "0.0.0.0:22"},
		{published{Proto: "tcp", HostPort: 2222, Port: 22}, "[::]:2222"},
		{published{Proto: "tcp", HostPort: 8080, Port: 80}, "192.168.1.10:8080"},
		{published{Proto: "tcp", HostIP: "192.168.1.10", HostPort: 8080, Port: 80}, "192.168.1.10:8080"},
		{published{Proto: "tcp", HostIP: "192.168.1.10", HostPort: 8081, Port: 80}, "8081"},
		{published{Proto: "udp", HostPort: 5353, Port: 53}, "5353/udp"},
		{published{Proto: "tcp", HostPort: 6000, Port: 60}, "127.0.0.1:6000"},
		{published{Proto: "tcp", HostIP: "192.168.1.11", HostPort: 8080, Port: 80}, ""}, // another address
		{published{Proto: "udp", HostPort: 22, Port: 22}, ""},                           // another protocol
		{published{Proto: "tcp", HostPort: 8082, Port: 80}, ""},                         // IPv6-only listener
		{published{Proto: "tcp", HostPort: 9999, Port: 80}, ""},
	} {
		err := listenerConflict([]published{c.p}, socks)
		if c.want == "" {
			if err != nil {
				t.Errorf("%+v: %v", c.p, err)
			}
			continue
		}
		if !errors.Is(err, errdefs.ErrInUse) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: got %v, want %q", c.p, err, c.want)
		}
	}
}

// TestDeadHolders: endpoints that hold a wanted port but whose container is
// gone (routed, veth missing; or network gone) do not block it, and only
// those that hold a wanted port are named.
func TestDeadHolders(t *testing.T) {
	nets := map[string]localNetwork{"vx": {ID: "vx", Backend: vxlan.Name}}
	tcp8080 := []published{{Proto: "tcp", HostPort: 8080, Port: 80}}
	eps := map[string]localEndpoint{
		"me":       {ID: "me", Network: "vx", HostIf: "tnme"},
		"alive":    {ID: "alive", Network: "vx", HostIf: "tnalive", Ports: tcp8080},
		"gone":     {ID: "gone", Network: "vx", HostIf: "tngone", Ports: tcp8080},
		"orphan":   {ID: "orphan", Network: "deleted", HostIf: "tnorphan", Ports: tcp8080},
		"gone9090": {ID: "gone9090", Network: "vx", HostIf: "tngone9090", Ports: []published{{Proto: "tcp", HostPort: 9090, Port: 90}}},
	}
	exists := func(e localEndpoint) bool { return e.HostIf == "tnalive" || e.HostIf == "tnme" }
	if got := deadHolders("me", tcp8080, eps, nets, exists); !slices.Equal(got, []string{"gone", "orphan"}) {
		t.Fatalf("dead holders %v, want [gone orphan]", got)
	}
	// The live holder still blocks the port.
	err := checkPorts("me", tcp8080, nil, eps, []string{"gone", "orphan"})
	if !errors.Is(err, errdefs.ErrInUse) || !strings.Contains(err.Error(), "endpoint alive") {
		t.Fatalf("live holder: %v", err)
	}
	held := withdrawPorts(eps, []string{"gone"})
	if len(eps["gone"].Ports) != 0 || !slices.Equal(held["gone"].Ports, tcp8080) {
		t.Fatalf("withdraw: now %v, held %v", eps["gone"].Ports, held["gone"].Ports)
	}
}

// TestPickPorts: a fixed port is taken as asked; -P and ranges get a free
// port, keep the one they have on a replay, never take one a fixed request
// of the same call or a busy port names, and fail plainly when none is free.
func TestPickPorts(t *testing.T) {
	eph := func() (int, int, error) { return 40000, 40003, nil }
	busy := map[int]bool{40001: true}
	free := func(p published) bool { return !busy[p.HostPort] }
	from := func(i int) func(int) int { return func(int) int { return i } }
	got, err := pickPorts([]PortRequest{
		{Proto: "tcp", Port: 80},
		{Proto: "tcp", Port: 81, HostPort: 40002, HostPortEnd: 40002},
		{Proto: "udp", Port: 53, HostPort: 9000, HostPortEnd: 9010},
	}, nil, free, eph, from(1))
	want := []published{{Proto: "tcp", HostPort: 40003, Port: 80}, {Proto: "tcp", HostPort: 40002, Port: 81}, {Proto: "udp", HostPort: 9001, Port: 53}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %v %v, want %v", got, err, want)
	}
	// A replay keeps the ports chosen before, wherever a search would start.
	again, err := pickPorts([]PortRequest{{Proto: "tcp", Port: 80}, {Proto: "udp", Port: 53, HostPort: 9000, HostPortEnd: 9010}}, got, free, eph, from(0))
	if err != nil || !slices.Equal(again, []published{got[0], got[2]}) {
		t.Fatalf("replay: %v %v, want %v", again, err, []published{got[0], got[2]})
	}
	// A port kept from before that is now outside the range asked is not kept.
	moved, err := pickPorts([]PortRequest{{Proto: "udp", Port: 53, HostPort: 7000, HostPortEnd: 7000}}, got, free, eph, from(0))
	if err != nil || !slices.Equal(moved, []published{{Proto: "udp", HostPort: 7000, Port: 53}}) {
		t.Fatalf("fixed after a range: %v %v", moved, err)
	}
	// Two requests for any port get two ports.
	two, err := pickPorts([]PortRequest{{Proto: "tcp", Port: 80}, {Proto: "tcp", Port: 81}}, nil, free, eph, from(0))
	if err != nil || len(two) != 2 || two[0].HostPort == two[1].HostPort || busy[two[0].HostPort] || busy[two[1].HostPort] {
		t.Fatalf("two any ports: %v %v", two, err)
	}
	// None free: a clear error.
	busy = map[int]bool{40000: true, 40001: true, 40002: true, 40003: true}
	if _, err := pickPorts([]PortRequest{{Proto: "tcp", Port: 80}}, nil, free, eph, from(0)); !errors.Is(err, errdefs.ErrInUse) || !strings.Contains(err.Error(), "no free host port in 40000-40003 for 80/tcp") {
		t.Fatalf("none free: %v", err)
	}
	// The ephemeral range unreadable: said, not guessed.
	bad := func() (int, int, error) { return 0, 0, errors.New("no proc") }
	if _, err := pickPorts([]PortRequest{{Proto: "tcp", Port: 80}}, nil, free, bad, from(0)); err == nil || !strings.Contains(err.Error(), "no proc") {
		t.Fatalf("no range: %v", err)
	}
}
