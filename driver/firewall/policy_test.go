package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/policy"
	"github.com/vishvananda/netlink"
)

// TestPolicyEnforced: three "containers" (namespaces) behind veths of this
// test's namespace, the host, named as tartan names endpoint interfaces.
// B's ingress takes TCP 80 from A only; C's egress is ICMP only. Real
// connections: A reaches B:80 (and the replies come back), not B:8080; C
// reaches nothing of B by TCP but pings it; A's egress is open. The sets
// and chains go with Remove, and a state without policy leaves no policy
// chain behind.
func TestPolicyEnforced(t *testing.T) {
	if os.Getenv(inNetns) == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("the policy test needs root and unshare (a network namespace of its own)")
		}
		t.Skip("SKIPPED (not in CI): needs root and unshare")
	}
	testkit.RequireRoot(t, "ip", "nsenter", "busybox", "ping")
	testkit.Sh(t, "sysctl -qw net.ipv4.ip_forward=1")
	ctr := map[string]testkit.NS{}
	addr := map[string]string{}
	for i, name := range []string{"a", "b", "c"} {
		ns := testkit.NewNS(t, fmt.Sprintf("tt-fwpol-%d-%s", os.Getpid(), name))
		ctr[name] = ns
		host, ip := "tnpol"+name, fmt.Sprintf("10.250.%d.2", i+1)
		addr[name] = ip
		testkit.MustRun(t, "ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
		testkit.Sh(t, fmt.Sprintf("ip addr add 10.250.%d.1/24 dev %s && ip link set %s up", i+1, host, host))
		ns.MustIP(t, "addr", "add", ip+"/24", "dev", "eth0")
		ns.MustIP(t, "link", "set", "eth0", "up")
		ns.MustIP(t, "route", "add", "default", "via", fmt.Sprintf("10.250.%d.1", i+1))
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", host).Run() })
	}
	for _, port := range []string{"80", "8080"} {
		srv := ctr["b"].Command("busybox", "httpd", "-f", "-p", port, "-h", t.TempDir())
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	}
	hostOf := func(ip string) netip.Prefix { return netip.PrefixFrom(netip.MustParseAddr(ip), 32) }
	st := State{
		Pools: []Pool{{Pool: netip.MustParsePrefix("10.250.0.0/16")}},
		Policed: []Policed{
			{HostIf: "tnpolb", Rules: policy.Rules{Ingress: policy.Side{Isolated: true, Allows: []policy.Allow{
				{Peers: []netip.Prefix{hostOf(addr["a"])}, Protocol: policy.TCP, Ports: policy.PortRange{First: 80, Last: 80}, Policy: "b-in"},
			}}}},
			{HostIf: "tnpolc", Rules: policy.Rules{Egress: policy.Side{Isolated: true, Allows: []policy.Allow{
				{AnyPeer: true, Protocol: policy.ICMP, Policy: "c-out"},
			}}}},
		},
	}
	// The deny log: what the NFLOG rules send to their group.
	ctx, cancel := context.WithCancel(t.Context())
	logged := make(chan kernel.Logged, 64)
	go func() {
		if err := kernel.ReadNFLOG(ctx, DenyLogGroup, func(l kernel.Logged) {
			select {
			case logged <- l:
			default:
			}
		}); err != nil {
			t.Errorf("read the deny log: %v", err)
		}
	}()
	t.Cleanup(cancel)
	f := applied(t, st)
	if sets := tartanSets(t); len(sets) != 1 {
		t.Fatalf("sets: %v, want one (a's address)", sets)
	}
	tcp := func(from, to, port string) bool {
		_, err := ctr[from].Exec("busybox", "nc", "-w", "2", addr[to], port)
		return err == nil
	}
	for _, c := range []struct {
		from, to, port string
		want           bool
	}{
		{"a", "b", "80", true}, {"a", "b", "8080", false}, {"c", "b", "80", false}, {"c", "b", "8080", false},
	} {
		if got := tcp(c.from, c.to, c.port); got != c.want {
			t.Errorf("%s -> %s:%s connected %v, want %v\n%s", c.from, c.to, c.port, got, c.want, testkit.Sh(t, f.Flavour()+"-save -t mangle -c"))
		}
	}
	if _, err := ctr["c"].Exec("ping", "-c", "1", "-W", "2", addr["b"]); err == nil {
		// C's egress lets ICMP out, but B's ingress takes TCP 80 from A
		// only: both ends decide.
		t.Errorf("c pinged b through b's ingress")
	}
	if _, err := ctr["c"].Exec("ping", "-c", "1", "-W", "2", addr["a"]); err != nil {
		t.Errorf("c's egress lets ICMP out, and a is open: %v", err)
	}
	if _, err := ctr["a"].Exec("ping", "-c", "1", "-W", "2", addr["c"]); err != nil {
		t.Errorf("a pings c (a's egress and c's ingress are open; the reply is established): %v", err)
	}
	// The denied flows were logged: a -> b:8080 by b's ingress.
	want := kernel.Logged{Prefix: "tartan deny ingress tnpolb", Src: netip.MustParseAddr(addr["a"]), Dst: netip.MustParseAddr(addr["b"]), Proto: 6, Port: 8080}
	for found := false; !found; {
		select {
		case l := <-logged:
			found = l == want
		case <-time.After(time.Minute):
			t.Fatalf("the deny log never had %+v", want)
		}
	}
	// Remove with policy applied takes everything, sets included; the
	// next apply makes it all again.
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	if m := testkit.Sh(t, f.Flavour()+"-save"); strings.Contains(m, "TARTAN") {
		t.Fatalf("rules left after Remove:\n%s", m)
	}
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	if tcp("c", "b", "80") || !tcp("a", "b", "80") {
		t.Fatal("the policy does not hold after Remove and Apply")
	}
	// Without policy: no policy chain, no set.
	st.Policed = nil
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	if m := testkit.Sh(t, f.Flavour()+"-save -t mangle"); strings.Contains(m, EgressChain) || strings.Contains(m, IngressChain) {
		t.Fatalf("policy chains left without policy:\n%s", m)
	}
	if !tcp("c", "b", "8080") {
		t.Fatal("c does not reach b:8080 once no policy applies")
	}
	if left := tartanSets(t); len(left) != 0 {
		t.Fatalf("sets left without policy: %v", left)
	}
}

// tartanSets lists the sets of tartan's in this namespace.
func tartanSets(t *testing.T) []string {
	t.Helper()
	all, err := netlink.IpsetListAll()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range all {
		if strings.HasPrefix(s.SetName, setPrefix) {
			out = append(out, s.SetName)
		}
	}
	return out
}
