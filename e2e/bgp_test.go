//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
)

// bird is a BIRD 2 daemon the test runs in a namespace of its own: the
// datacenter's router of the bgp backend's tests.
type bird struct {
	ns   testkit.NS
	sock string
	stop func() // stops it (also at cleanup)
}

// startBird runs BIRD in ns with config conf (in the foreground, stopped
// at cleanup; a killed run's is removed with its namespace's processes).
func startBird(t *testing.T, ns testkit.NS, conf string) *bird {
	t.Helper()
	dir := t.TempDir()
	b := &bird{ns: ns, sock: filepath.Join(dir, "bird.ctl")}
	cfg := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("bird", "-p", "-c", cfg).CombinedOutput(); err != nil {
		t.Fatalf("bird refuses its configuration: %v %s\n%s", err, out, conf)
	}
	cmd := ns.Command("bird", "-f", "-c", cfg, "-s", b.sock)
	logf, err := os.Create(filepath.Join(dir, "bird.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	forget := testkit.RecordProcess(cmd.Process.Pid, "bird in "+ns.Name)
	var once sync.Once
	b.stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
			forget()
		})
	}
	t.Cleanup(func() {
		b.stop()
		logf.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logf.Name())
			t.Logf("bird's log:\n%s", out)
		}
	})
	testbed.Eventually(t, testbed.MinWait, "bird answers on its socket", func() error {
		_, err := b.cli("show", "status")
		return err
	})
	return b
}

func (b *bird) cli(args ...string) (string, error) {
	return b.ns.Exec("birdc", append([]string{"-s", b.sock}, args...)...)
}

// routes is BIRD's table: "prefix via next hop", sorted.
func (b *bird) routes() ([]string, error) {
	out, err := b.cli("show", "route")
	if err != nil {
		return nil, err
	}
	var routes []string
	prefix := ""
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if _, err := netip.ParsePrefix(f[0]); err == nil {
			prefix = f[0]
			continue
		}
		if f[0] == "via" && len(f) > 1 && prefix != "" {
			routes = append(routes, prefix+" via "+f[1])
		}
	}
	slices.Sort(routes)
	return routes, nil
}

// established says which of BIRD's BGP sessions are Established.
func (b *bird) established() (map[string]bool, error) {
	out, err := b.cli("show", "protocols")
	if err != nil {
		return nil, err
	}
	up := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] == "BGP" {
			up[f[0]] = strings.Contains(line, "Established")
		}
	}
	return up, nil
}

// blocksOf is "block via host address" for every block of pool in the
// store, sorted: what the router must hold.
func blocksOf(t *testing.T, c *testbed.Cluster, pool string) []string {
	t.Helper()
	var out []string
	for _, k := range c.Consul.Keys(t, "tartan/"+kv.BlockPrefix(pool)) {
		var b kv.Block
		var h kv.Host
		if err := json.Unmarshal([]byte(c.Consul.Get(t, k)), &b); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if err := json.Unmarshal([]byte(c.Consul.Get(t, "tartan/"+kv.HostPath(b.Host))), &h); err != nil {
			t.Fatalf("host %s: %v", b.Host, err)
		}
		out = append(out, b.CIDR+" via "+h.Address)
	}
	slices.Sort(out)
	return out
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}

// capture runs tcpdump in ns on iface for the first packet that filter
// matches, calling send meanwhile until it comes; it returns tcpdump's line.
func capture(t *testing.T, ns testkit.NS, iface, filter string, send func()) string {
	t.Helper()
	cmd := ns.Command("timeout", "120", "tcpdump", "-n", "-l", "-c", "1", "-i", iface, filter)
	var out strings.Builder
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	time.Sleep(time.Second) // tcpdump listening
	for {
		select {
		case err := <-done:
			if err != nil || out.Len() == 0 {
				t.Fatalf("tcpdump -i %s %q in %s saw nothing: %v", iface, filter, ns.Name, err)
			}
			return strings.TrimSpace(out.String())
		case <-time.After(500 * time.Millisecond):
			send()
		}
	}
}

// The bgp backend (issue 27) with a real router: BIRD 2 in a namespace
// joins two underlay subnets; hosts 1 and 2 on one, host 3 on the other,
// each peering with it (eBGP, hosts AS 64512, router AS 64500), and an
// outside client behind the router that is no tartan host.
//   - The router's table holds exactly the hosts' blocks, each through its
//     host (read from BIRD's own CLI).
//   - Containers on hosts 1 and 3 reach each other with no encapsulation:
//     a capture on the router shows their own addresses.
//   - The client reaches a container's address directly, no -p and no
//     NAT: the container's host hands it the client's own address.
//   - A dual-stack bgp network: the IPv6 blocks announced through the
//     hosts' IPv6 addresses, its containers reach each other over IPv6.
//   - tartan bgp shows each host's session Established and its block
//     announced; tartan doctor finds nothing.
//   - A container on host 2 with an address of host 3's block (--ip) is
//     announced as a /32 by host 2 and reached there, withdrawn with it.
//   - Host 1's plugin killed: graceful restart keeps the router's route to
//     host 1's block, b3's pings to b1 go on (at most 1 s lost).
//   - Host 3's network removed: its block leaves the router's table.
//   - Host 1 silent (its link down): its block leaves the router once the
//     hold and restart times ran out, and comes back with the link.
//   - The router gone: tartan doctor on host 1 names the session.
func TestBGP(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox", "bird", "birdc", "tcpdump")
	c := testbed.NewCluster(t, "bg", 1500)
	c.AddSegment(t, "br1")
	rt := testkit.NewNS(t, "tt-bg-rt")
	c.PlugInto(t, rt, "br0", "eth1", "rta", "10.98.0.1/24")
	c.PlugInto(t, rt, "br1", "eth2", "rtb", "10.97.0.1/24")
	client := testkit.NewNS(t, "tt-bg-cl")
	testkit.Link(t, rt, "eth3", "10.96.0.1/24", client, "eth1", "10.96.0.2/24", 1500)
	client.MustIP(t, "route", "add", "default", "via", "10.96.0.1")
	rt.MustExec(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
	// IPv6 on both subnets: the router fd98::1 and fd97::1.
	rt.MustIP(t, "addr", "add", "fd98::1/64", "dev", "eth1", "nodad")
	rt.MustIP(t, "addr", "add", "fd97::1/64", "dev", "eth2", "nodad")
	c.ConsulNS.MustIP(t, "route", "add", "default", "via", "10.98.0.1") // host 3 reaches Consul through the router
	r := startBird(t, rt, `router id 10.98.0.1;
protocol device {}
protocol kernel { ipv4 { import none; export all; }; }
protocol kernel { ipv6 { import none; export all; }; }
template bgp host {
  local as 64500;
  hold time 9;
  graceful restart on;
  ipv4 { import all; export none; };
  ipv6 { import all; export none; };
}
protocol bgp h1 from host { neighbor 10.98.0.11 as 64512; }
protocol bgp h2 from host { neighbor 10.98.0.12 as 64512; }
protocol bgp h3 from host { neighbor 10.97.0.13 as 64512; }
`)
	h1, h2 := c.AddBareHost(t), c.AddBareHost(t)
	h3 := c.AddBareHostOn(t, "br1", "10.97.0.13/24")
	for i, h := range []*testbed.Host{h1, h2, h3} {
		gw, addr6, gw6 := "10.98.0.1", fmt.Sprintf("fd98::%d/64", 11+i), "fd98::1"
		if i == 2 {
			gw, addr6, gw6 = "10.97.0.1", "fd97::13/64", "fd97::1"
		}
		h.MustIP(t, "route", "add", "default", "via", gw)
		h.MustIP(t, "addr", "add", addr6, "dev", "eth1", "nodad")
		h.MustIP(t, "-6", "route", "add", "default", "via", gw6)
		h.InstallPlugin(t, append(c.Settings(), "BGP_AS=64512", "BGP_PEERS="+gw+":64500", "BGP_HOLD_TIME=9s", "BGP_RESTART_TIME=30s")...)
	}
	testbed.Eventually(t, testbed.MinWait, "every host's BGP session Established at the router", func() error {
		up, err := r.established()
		if err != nil || !up["h1"] || !up["h2"] || !up["h3"] {
			return fmt.Errorf("sessions %v %v", up, err)
		}
		return nil
	})
	const pool = "10.182.0.0/16"
	for _, h := range []*testbed.Host{h1, h2, h3} {
		h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", pool, "-o", "tartan.backend=bgp", "bgpnet")
	}
	// A host-gw network announced too (-o tartan.bgp=true), on hosts 1
	// and 2 (host-gw needs one segment).
	const hgPool = "10.183.0.0/16"
	for _, h := range []*testbed.Host{h1, h2} {
		h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", hgPool, "-o", "tartan.backend=host-gw", "-o", "tartan.bgp=true", "hgnet")
	}
	h1.MustDocker(t, "run", "-d", "--name", "hg1", "--network", "hgnet", "tbox", "sleep", "36000")
	h1.MustDocker(t, "run", "-d", "--name", "b1", "--network", "bgpnet", "tbox", "sleep", "36000")
	h3.MustDocker(t, "run", "-d", "--name", "b3", "--network", "bgpnet", "tbox", "sleep", "36000")
	ipOf := func(h *testbed.Host, name string) string {
		return h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	}
	ip1, ip3 := ipOf(h1, "b1"), ipOf(h3, "b3")

	// The router's table is the store's blocks, each via its host.
	var want []string
	testbed.Eventually(t, testbed.MinWait, "the router holds exactly the hosts' blocks", func() error {
		want = sorted(append(blocksOf(t, c, pool), blocksOf(t, c, hgPool)...))
		got, err := r.routes()
		if err != nil || len(want) != 3 || !slices.Equal(got, want) {
			return fmt.Errorf("router %v (%v), store %v", got, err, want)
		}
		return nil
	})
	t.Logf("router's table: %v", want)
	// tartan bgp on each host with a container: its session Established,
	// its block announced through its own address.
	for i, h := range []*testbed.Host{h1, h3} {
		var st api.BGPStatus
		if err := json.Unmarshal([]byte(h.Tartan(t, "bgp", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		var mine []string
		for _, r := range want {
			if strings.HasSuffix(r, " via "+c.Addr[2*i]) {
				mine = append(mine, r)
			}
		}
		if !st.On || st.AS != 64512 || len(st.Sessions) != 1 || st.Sessions[0].State != "established" || st.Sessions[0].Since.IsZero() ||
			st.Sessions[0].Sent != uint64(len(mine)) || !slices.Equal(st.Announced, mine) {
			t.Errorf("tartan bgp on %s: %+v, want its session established, announcing %v", h.Name, st, mine)
		}
	}
	testbed.Eventually(t, testbed.MinWait, "tartan doctor on host 1 finds nothing wrong", func() error {
		if out, rc, _ := h1.TartanRC(t, "doctor"); rc != 0 {
			return fmt.Errorf("exit %d: %s", rc, out)
		}
		return nil
	})

	// Host 1's container to host 3's across the router, no encapsulation.
	testbed.Eventually(t, testbed.MinWait, "b1 reaches b3 across the two subnets", func() error {
		out, err := h1.Docker("exec", "b1", "ping", "-c", "1", "-W", "2", ip3)
		if err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	seen := capture(t, rt, "eth2", fmt.Sprintf("icmp and src host %s and dst host %s", ip1, ip3), func() {
		_, _ = h1.Docker("exec", "b1", "ping", "-c", "1", "-W", "1", ip3)
	})
	t.Logf("on the router, towards host 3: %s", seen)

	// The client reaches b3 at its own address; host 3 hands b3 the
	// client's address (no NAT on the way in).
	testbed.Eventually(t, testbed.MinWait, "the outside client reaches b3 directly", func() error {
		out, err := client.Exec("ping", "-c", "1", "-W", "2", ip3)
		if err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	veth := strings.Fields(h3.MustIP(t, "route", "get", ip3))
	dev := veth[slices.Index(veth, "dev")+1]
	seen = capture(t, h3.NS, dev, fmt.Sprintf("icmp and src host 10.96.0.2 and dst host %s", ip3), func() {
		_, _ = client.Exec("ping", "-c", "1", "-W", "1", ip3)
	})
	t.Logf("at b3's interface: %s", seen)
	// b3's reply leaves with its own address too (the pool is not
	// masqueraded): the client sees it.
	seen = capture(t, client, "eth1", fmt.Sprintf("icmp and src host %s and dst host 10.96.0.2", ip3), func() {
		_, _ = client.Exec("ping", "-c", "1", "-W", "1", ip3)
	})
	t.Logf("at the client: %s", seen)
	// The announced host-gw network's container too.
	testbed.Eventually(t, testbed.MinWait, "the outside client reaches hg1 on the announced host-gw network", func() error {
		out, err := client.Exec("ping", "-c", "1", "-W", "2", ipOf(h1, "hg1"))
		if err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	h1.MustDocker(t, "rm", "-f", "hg1")
	for _, h := range []*testbed.Host{h1, h2} {
		h.MustDocker(t, "network", "rm", "hgnet")
	}

	// Dual stack: hosts 1 and 3 announce their IPv6 blocks through their
	// global IPv6 addresses, and their containers reach each other across
	// the router over IPv6.
	const pool6 = "fd82::/64"
	for _, h := range []*testbed.Host{h1, h3} {
		h.MustDocker(t, "network", "create", tnet, tipam, "--ipv6", "--subnet", "10.184.0.0/16", "--subnet", pool6, "-o", "tartan.backend=bgp", "bgp6")
	}
	h1.MustDocker(t, "run", "-d", "--name", "d1", "--network", "bgp6", "tbox", "sleep", "36000")
	h3.MustDocker(t, "run", "-d", "--name", "d3", "--network", "bgp6", "tbox", "sleep", "36000")
	six := strings.NewReplacer("via 10.98.0.11", "via fd98::11", "via 10.97.0.13", "via fd97::13")
	testbed.Eventually(t, testbed.MinWait, "the router holds both hosts' IPv6 blocks through their IPv6 addresses", func() error {
		want6 := blocksOf(t, c, pool6)
		for i := range want6 {
			want6[i] = six.Replace(want6[i])
		}
		got, err := r.routes()
		if err != nil || len(want6) != 2 || !slices.Equal(slices.DeleteFunc(got, func(r string) bool { return !strings.Contains(r, ":") }), want6) {
			return fmt.Errorf("router %v (%v), want the IPv6 blocks %v", got, err, want6)
		}
		return nil
	})
	if got, err := r.routes(); err == nil {
		t.Logf("router's table with the dual-stack network: %v", got)
	}
	d3 := h3.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", "d3")
	testbed.Eventually(t, testbed.MinWait, "d1 reaches d3 over IPv6 across the router", func() error {
		if out, err := h1.Docker("exec", "d1", "ping", "-c", "1", "-W", "2", d3); err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	})
	h1.MustDocker(t, "rm", "-f", "d1")
	h3.MustDocker(t, "rm", "-f", "d3")
	for _, h := range []*testbed.Host{h1, h3} {
		h.MustDocker(t, "network", "rm", "bgp6")
	}

	// A container on host 2 with an address of host 3's block (--ip): its
	// /32 is announced by host 2 and the client reaches it there; it goes
	// with the container.
	b3block, _ := netip.ParsePrefix(strings.Fields(want[slices.IndexFunc(want, func(r string) bool { return strings.HasSuffix(r, " via 10.97.0.13") })])[0])
	ip2 := b3block.Addr().Next().Next().Next().Next().Next().String()
	h2.MustDocker(t, "run", "-d", "--name", "b2", "--network", "bgpnet", "--ip", ip2, "tbox", "sleep", "36000")
	exception := ip2 + "/32 via 10.98.0.12"
	testbed.Eventually(t, testbed.MinWait, "the router holds host 2's container away from its block", func() error {
		got, err := r.routes()
		if err != nil || !slices.Equal(got, sorted(append(blocksOf(t, c, pool), exception))) {
			return fmt.Errorf("router %v (%v), want the store's blocks and %s", got, err, exception)
		}
		out, err := client.Exec("ping", "-c", "1", "-W", "2", ip2)
		if err != nil {
			return fmt.Errorf("the client does not reach %s: %v %s", ip2, err, out)
		}
		return nil
	})
	h2.MustDocker(t, "rm", "-f", "b2")
	testbed.Eventually(t, testbed.MinWait, "host 2's /32 withdrawn with its container", func() error {
		got, err := r.routes()
		if err != nil || slices.Contains(got, exception) {
			return fmt.Errorf("router %v (%v)", got, err)
		}
		return nil
	})

	// Host 1's plugin killed (graceful restart): the router keeps host 1's
	// block meanwhile, and b3's pings to b1 across the router go on.
	startPinger(t, h3, "pinger", "bgpnet", ip1, 100)
	time.Sleep(3 * time.Second)
	h1.KillPlugin(t)
	testbed.Eventually(t, testbed.MinWait, "host 1's session Established again", func() error {
		if up, err := r.established(); err != nil || !up["h1"] {
			return fmt.Errorf("sessions %v %v", up, err)
		}
		return nil
	})
	if lost := pingLoss(t, h3, "pinger", 100); lost > 1 {
		t.Errorf("host 1's plugin restart cut b3 off from b1 for %.1f s (graceful restart: at most 1 s)", lost)
	}

	// Host 3's network goes: its block leaves the router's table.
	h3.MustDocker(t, "rm", "-f", "b3", "pinger")
	h3.MustDocker(t, "network", "rm", "bgpnet")
	testbed.Eventually(t, testbed.MinWait, "host 3's block withdrawn from the router", func() error {
		want = blocksOf(t, c, pool)
		got, err := r.routes()
		if err != nil || len(want) != 1 || !slices.Equal(got, want) {
			return fmt.Errorf("router %v (%v), store %v", got, err, want)
		}
		return nil
	})
	// Host 1 cut off from the router (its link down, no goodbye): its
	// routes go once the hold time and the restart time have run out, and
	// come back with the link.
	h1Routes := func(r []string) (n int) {
		for _, x := range r {
			if strings.HasSuffix(x, " via 10.98.0.11") {
				n++
			}
		}
		return n
	}
	h1.MustIP(t, "link", "set", "eth1", "down")
	testbed.Eventually(t, testbed.MinWait, "host 1's block withdrawn at the router once host 1 is silent past hold and restart time", func() error {
		got, err := r.routes()
		if err != nil || h1Routes(got) != 0 {
			return fmt.Errorf("router %v (%v)", got, err)
		}
		return nil
	})
	h1.MustIP(t, "link", "set", "eth1", "up")
	h1.MustIP(t, "route", "replace", "default", "via", "10.98.0.1")
	testbed.Eventually(t, testbed.MinWait, "host 1's block back at the router with its link", func() error {
		got, err := r.routes()
		if err != nil || h1Routes(got) != 1 {
			return fmt.Errorf("router %v (%v)", got, err)
		}
		return nil
	})

	// The router gone: doctor on host 1 names its session, with the fix.
	r.stop()
	testbed.Eventually(t, testbed.MinWait, "tartan doctor on host 1 reports its BGP session down", func() error {
		out, rc, _ := h1.TartanRC(t, "doctor")
		if rc != 1 || !strings.Contains(out, "BGP session with 10.98.0.1") || !strings.Contains(out, "TCP port 179") {
			return fmt.Errorf("exit %d: %s", rc, out)
		}
		return nil
	})
	h1.MustDocker(t, "rm", "-f", "b1")
	for _, h := range []*testbed.Host{h1, h2} {
		h.MustDocker(t, "network", "rm", "bgpnet")
	}
}
