package driver_test

import (
	"context"
	"fmt"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/fastpath"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// The data-plane tests run in a network namespace of their own: TestMain
// re-executes the test binary under "unshare --net", so every veth, route,
// VXLAN device and iptables rule they make lives and dies with it.
const inNetns = "TARTAN_TEST_IN_NETNS"

func TestMain(m *testing.M) {
	os.Exit(testkit.MainInOwnNetns(m, inNetns))
}

type bed struct {
	t     *testing.T
	drv   *driver.Driver
	fp    *fastpath.FastPath // nil: the kernel path
	local kv.Store
	store kv.Store
	fw    *firewall.Firewall
	ctx   context.Context
}

// newFastBed is newBed with the eBPF fast path loaded, as the plugin
// loads it by default.
func newFastBed(t *testing.T) *bed {
	b := newBed(t)
	log := logrus.New()
	log.SetOutput(io.Discard)
	fp, err := fastpath.Load(log)
	if err != nil {
		t.Fatalf("the fast path does not load on this kernel: %v", err)
	}
	t.Cleanup(func() { _ = fp.Close() })
	b.fp = fp
	b.restart()
	return b
}

func newBed(t *testing.T) *bed {
	testkit.Require(t, os.Getenv(inNetns) != "", "data-plane tests need root and unshare (they run in their own network namespace)")
	testkit.RequireRoot(t, "ip", "iptables", "busybox")
	// An underlay: a veth with an address and a default route.
	if !kernel.LinkExists("under0") {
		testkit.Sh(t, "ip link set lo up; ip link add under0 mtu 1500 type veth peer name under1 && ip addr add 10.77.0.1/24 dev under0 && ip link set under0 up && ip link set under1 up && ip route add default via 10.77.0.254")
	}
	fw, err := firewall.New()
	if err != nil {
		t.Fatal(err)
	}
	b := &bed{t: t, local: kv.NewMemory(), store: kv.NewMemory(), fw: fw, ctx: context.Background()}
	b.restart()
	return b
}

// restart builds a new driver over the same stores, as a restarted plugin.
func (b *bed) restart() {
	log := logrus.New()
	log.SetOutput(io.Discard)
	b.drv = driver.New(b.store, b.local, ipam.New(b.store, ipam.Config{Host: "h1"}, log), b.fw, driver.Config{Host: "h1", Advertise: "under0", OrphanGrace: 300 * time.Millisecond, FastPath: b.fp}, log)
	if err := b.drv.Restore(b.ctx); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bed) network(id, pool string, opts map[string]any) error {
	return b.drv.CreateNetwork(b.ctx, driver.NetworkRequest{ID: id, Options: opts, Space: ipam.LocalSpace, Pool: netip.MustParsePrefix(pool)})
}

func generic(kv ...string) map[string]any {
	g := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		g[kv[i]] = kv[i+1]
	}
	return map[string]any{"com.docker.network.generic": g}
}

// container plays Docker's part: it creates the endpoint, moves the peer into
// a namespace named ns, and configures it as the Join answer says.
func (b *bed) container(netID, epID, ns, ip string) {
	t := b.t
	t.Helper()
	if _, err := b.drv.CreateEndpoint(b.ctx, driver.EndpointRequest{NetworkID: netID, EndpointID: epID,
		Addr: netip.MustParsePrefix(ip + "/32"), MAC: "02:42:0a:00:00:" + epID[:2]}); err != nil {
		t.Fatalf("CreateEndpoint: %v", err)
	}
	j, err := b.drv.Join(b.ctx, epID)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	forget := testkit.RecordNS(ns)
	testkit.Sh(t, fmt.Sprintf("ip netns del %[1]s 2>/dev/null; ip netns add %[1]s && ip link set %[2]s netns %[1]s && ip -n %[1]s link set %[2]s name eth0 && ip -n %[1]s addr add %[3]s/32 dev eth0 && ip -n %[1]s link set eth0 up && ip -n %[1]s link set lo up",
		ns, j.Interface, ip))
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run(); forget() })
	for _, r := range j.Routes {
		if !r.NextHop.IsValid() {
			testkit.Sh(t, fmt.Sprintf("ip -n %s route add %s dev eth0", ns, r.Dst))
		} else {
			testkit.Sh(t, fmt.Sprintf("ip -n %s route add %s via %s dev eth0", ns, r.Dst, r.NextHop))
		}
	}
	if j.Gateway.IsValid() {
		testkit.Sh(t, fmt.Sprintf("ip -n %s route add default via %s dev eth0", ns, j.Gateway))
	}
}

// pings says whether namespace ns ("" for the test's own) reaches ip.
func pings(ns, ip string) bool {
	if ns == "" {
		return exec.Command("busybox", "ping", "-c1", "-W1", ip).Run() == nil
	}
	return exec.Command("ip", "netns", "exec", ns, "busybox", "ping", "-c1", "-W1", ip).Run() == nil
}

// TestNetworkLifecycleAndDataPath runs on the eBPF fast path, as the
// plugin does by default, and on the kernel path (FASTPATH=off, or a
// kernel that refuses the programs): the same isolation either way.
func TestNetworkLifecycleAndDataPath(t *testing.T) {
	t.Run("fastpath", func(t *testing.T) { testNetworkLifecycleAndDataPath(t, newFastBed(t)) })
	t.Run("kernelpath", func(t *testing.T) { testNetworkLifecycleAndDataPath(t, newBed(t)) })
}

func testNetworkLifecycleAndDataPath(t *testing.T, b *bed) {
	if err := b.network("net-web", "10.244.0.0/16", generic("tartan.backend", "vxlan")); err != nil {
		t.Fatal(err)
	}
	vx := testkit.Sh(t, "ip -d link show tartan.256") // the first automatic VNI (kv.FirstAutoVNI)
	for _, want := range []string{"mtu 1450", "vxlan id 256 ", "local 10.77.0.1", "dev under0", "dstport 8472", "nolearning"} {
		if !strings.Contains(vx, want) {
			t.Fatalf("vxlan device lacks %q:\n%s", want, vx)
		}
	}
	// A replayed CreateNetwork changes nothing; the same pool under another ID is refused.
	if err := b.network("net-web", "10.244.0.0/16", generic("tartan.backend", "vxlan")); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if err := b.network("net-other", "10.244.0.0/16", nil); err == nil || !strings.Contains(err.Error(), "already used by tartan network") {
		t.Fatalf("same pool twice: %v", err)
	}
	if err := b.network("net-big", "10.245.0.0/16", generic("com.docker.network.driver.mtu", "9000")); err == nil || !strings.Contains(err.Error(), "larger than the underlay allows") {
		t.Fatalf("mtu: %v", err)
	}
	if kernel.LinkExists("tartan.257") {
		t.Fatal("a refused network left its VXLAN device behind")
	}
	if err := b.network("net-gw", "10.246.0.0/16", generic("tartan.backend", "host-gw")); err != nil {
		t.Fatal(err)
	}
	if err := b.network("net-int", "10.247.0.0/16", map[string]any{"com.docker.network.internal": true}); err != nil {
		t.Fatal(err)
	}
	b.container("net-web", "01aaaaaaaaaaaa", "tdp-c1", "10.244.0.2")
	b.container("net-web", "02aaaaaaaaaaaa", "tdp-c2", "10.244.0.3")
	b.container("net-gw", "03bbbbbbbbbbbb", "tdp-c3", "10.246.0.2")
	b.container("net-int", "04cccccccccccc", "tdp-c4", "10.247.0.2")
	b.container("net-int", "05cccccccccccc", "tdp-c5", "10.247.0.3")
	routes := testkit.Sh(t, "ip route show proto 84")
	for _, want := range []string{"10.244.0.2 dev tn01aaaaaaaaa", "10.246.0.2 dev tn03bbbbbbbbb"} {
		if !strings.Contains(routes, want) {
			t.Fatalf("routes lack %q:\n%s", want, routes)
		}
	}
	if err := b.drv.Reconcile(b.ctx); err != nil { // writes the fast path's maps (the plugin's writer does it in the background)
		t.Fatalf("reconcile: %v", err)
	}
	before := b.counters()
	if !pings("tdp-c1", "10.244.0.3") || !pings("tdp-c2", "10.244.0.2") {
		t.Fatal("containers on one network do not reach each other")
	}
	if after := b.counters(); b.fp != nil && after["local"] < before["local"]+2 {
		// Two pings' requests and replies (the first request may wait for
		// the neighbour on the kernel path).
		t.Fatalf("the fast path did not carry the pings: counters before %v, after %v", before, after)
	} else if b.fp == nil && len(after) != 0 {
		t.Fatalf("fast path counters with the fast path off: %v", after)
	}
	if b.fp != nil {
		attached := testkit.Sh(t, "ip -br link | grep -c tn || true")
		on, links, _, _ := b.drv.FastPath()
		if !on || len(links) == 0 {
			t.Fatalf("fast path on=%v attached to %v (%s endpoint links)", on, links, attached)
		}
	}
	if !pings("tdp-c4", "10.247.0.3") {
		t.Fatal("containers on one internal network do not reach each other")
	}
	if pings("tdp-c1", "10.246.0.2") || pings("tdp-c3", "10.244.0.2") {
		t.Fatal("containers on different networks reach each other")
	}
	if pings("tdp-c4", "10.244.0.2") || pings("tdp-c1", "10.247.0.2") {
		t.Fatal("an internal network is reachable from, or reaches, another network")
	}
	// Masquerade for non-internal networks only.
	nat := testkit.Sh(t, "iptables -t nat -S "+firewall.PostroutingChain)
	if !strings.Contains(nat, "-s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE") || strings.Contains(nat, "10.247.0.0/16") {
		t.Fatalf("nat rules:\n%s", nat)
	}
	// Published ports: DNAT plus a forward accept, withdrawn on revoke.
	pm := []driver.PortRequest{{Proto: "tcp", Port: 8080, HostPort: 18080}}
	var err error
	if err = b.drv.PublishPorts(b.ctx, "01aaaaaaaaaaaa", pm); err != nil {
		t.Fatal(err)
	}
	if out := testkit.Sh(t, "iptables -t nat -S "+firewall.DNATChain); !strings.Contains(out, "--dport 18080 -j DNAT --to-destination 10.244.0.2:8080") {
		t.Fatalf("dnat rules:\n%s", out)
	}
	if out := testkit.Sh(t, "iptables -S "+firewall.ForwardChain); !strings.Contains(out, "-d 10.244.0.2/32 -p tcp -m tcp --dport 8080 -m conntrack --ctstate DNAT -j ACCEPT") {
		t.Fatalf("forward rules:\n%s", out)
	}
	// Hairpin: a container of the same network reaches the published port
	// through the host's address; the reply must go back through the
	// kernel's conntrack (which undoes the DNAT), not the fast path.
	www := t.TempDir()
	if err := os.WriteFile(www+"/index.html", []byte("hairpin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	httpd := exec.Command("ip", "netns", "exec", "tdp-c1", "busybox", "httpd", "-f", "-p", "8080", "-h", www)
	if err := httpd.Start(); err != nil {
		t.Fatal(err)
	}
	forgetHTTPD := testkit.RecordProcess(httpd.Process.Pid, "httpd")
	t.Cleanup(func() { _ = httpd.Process.Kill(); _ = httpd.Wait(); forgetHTTPD() })
	before = b.counters()
	var got []byte
	for i := 0; i < 10; i++ {
		if got, err = exec.Command("ip", "netns", "exec", "tdp-c2", "timeout", "2", "busybox", "wget", "-q", "-O", "-", "http://10.77.0.1:18080/index.html").CombinedOutput(); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // httpd starting
	}
	if string(got) != "hairpin\n" {
		t.Fatalf("a container does not reach its network's published port through the host's address: %v %q", err, got)
	}
	if after := b.counters(); b.fp != nil && after["stack_port"] <= before["stack_port"] {
		t.Fatalf("the published port's flow was not left to the kernel path: counters before %v, after %v", before, after)
	}
	if err := b.drv.WithdrawPorts(b.ctx, "01aaaaaaaaaaaa"); err != nil {
		t.Fatal(err)
	}
	if out := testkit.Sh(t, "iptables -t nat -S "+firewall.DNATChain); strings.Contains(out, "18080") {
		t.Fatalf("dnat rule left after revoke:\n%s", out)
	}
	// Leave withdraws them too: Docker 29 may send Leave with no Revoke.
	if err := b.drv.PublishPorts(b.ctx, "01aaaaaaaaaaaa", pm); err != nil {
		t.Fatal(err)
	}
	if err := b.drv.Leave(b.ctx, "01aaaaaaaaaaaa"); err != nil {
		t.Fatal(err)
	}
	if out := testkit.Sh(t, "iptables -t nat -S "+firewall.DNATChain); strings.Contains(out, "18080") {
		t.Fatalf("dnat rule left after leave:\n%s", out)
	}
	if err := b.drv.Leave(b.ctx, "01aaaaaaaaaaaa"); err != nil {
		t.Fatalf("a second leave: %v", err)
	}
	// -P: a free port of the ephemeral range, the same one on a replay,
	// shown in the endpoint's operational info.
	anyPort := []driver.PortRequest{{Proto: "tcp", Port: 8080}}
	portOf := func() string {
		info, err := b.drv.EndpointInfo(b.ctx, "01aaaaaaaaaaaa")
		_, hp, ok := strings.Cut(info["tartan.ports"], "8080/tcp -> 0.0.0.0:")
		if err != nil || !ok || hp == "" {
			t.Fatalf("oper info after -P: %v %v", info, err)
		}
		return hp
	}
	if err := b.drv.PublishPorts(b.ctx, "01aaaaaaaaaaaa", anyPort); err != nil {
		t.Fatal(err)
	}
	chosen := portOf()
	lo, hi, err := kernel.EphemeralPorts()
	if n, _ := strconv.Atoi(chosen); err != nil || n < lo || n > hi {
		t.Fatalf("-P chose %s, outside the ephemeral range %d-%d (%v)", chosen, lo, hi, err)
	}
	if out := testkit.Sh(t, "iptables -t nat -S "+firewall.DNATChain); !strings.Contains(out, "--dport "+chosen+" -j DNAT --to-destination 10.244.0.2:8080") {
		t.Fatalf("dnat rules after -P:\n%s", out)
	}
	if err := b.drv.PublishPorts(b.ctx, "01aaaaaaaaaaaa", anyPort); err != nil || portOf() != chosen {
		t.Fatalf("a replayed -P moved the port from %s (%v)", chosen, err)
	}
	if err := b.drv.WithdrawPorts(b.ctx, "01aaaaaaaaaaaa"); err != nil {
		t.Fatal(err)
	}
	info, err := b.drv.EndpointInfo(b.ctx, "01aaaaaaaaaaaa")
	if err != nil || info["tartan.backend"] != "vxlan" || info["tartan.host"] != "h1" || info["tartan.vni"] != "256" {
		t.Fatalf("oper info: %v %v", info, err)
	}

	// Restart: a new driver from the same local state adopts everything,
	// repairs what was deleted by hand and removes only stray objects it owns.
	// A stray pair with both ends here goes once it stayed unknown for the
	// grace period; the host end of a pair whose other end a container
	// holds stays, whatever the records say (a reinstalled plugin
	// with no records deleted every container's link).
	testkit.Sh(t, "ip link del tartan.256; ip route del 10.244.0.3/32; ip link add tn0123456789a type veth peer name tnfoo")
	forget := testkit.RecordNS("tdp-held")
	testkit.Sh(t, "ip netns add tdp-held && ip link add tn0123456789b type veth peer name eth9 netns tdp-held")
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", "tdp-held").Run(); forget() })
	b.restart()
	if err := b.drv.Reconcile(b.ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if !kernel.LinkExists("tartan.256") || !strings.Contains(testkit.Sh(t, "ip route show proto 84"), "10.244.0.3 dev") {
		t.Fatalf("reconcile did not repair the VXLAN device and the route:\n%s\n%s", testkit.Sh(t, "ip -br link"), testkit.Sh(t, "ip route show proto 84"))
	}
	if !kernel.LinkExists("tn0123456789a") {
		t.Fatal("reconcile removed an unknown link before its grace period")
	}
	time.Sleep(400 * time.Millisecond)
	if err := b.drv.Reconcile(b.ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if kernel.LinkExists("tn0123456789a") {
		t.Fatal("reconcile kept a stray endpoint link")
	}
	if !kernel.LinkExists("tn0123456789b") {
		t.Fatal("reconcile removed a link whose other end a container holds")
	}
	testkit.Sh(t, "ip link del tn0123456789b")
	if !pings("tdp-c1", "10.244.0.3") {
		t.Fatal("no connectivity after the restart")
	}
	testkit.Sh(t, "ip link del tnfoo 2>/dev/null || true")

	// Deletes are idempotent and leave nothing behind, connection tracking
	// entries included (issue 24, audit M6).
	testkit.Sh(t, "ping -c 1 -W 1 10.244.0.3 >/dev/null || true") // tracked on either path: the host's own
	if n := conntrackOf(t, "10.244.0.3"); n == 0 {
		t.Fatal("no connection tracking entry of 10.244.0.3 after the pings: the check below would prove nothing")
	}
	for _, ep := range []struct{ n, e string }{{"net-web", "01aaaaaaaaaaaa"}, {"net-web", "02aaaaaaaaaaaa"}, {"net-gw", "03bbbbbbbbbbbb"}, {"net-int", "04cccccccccccc"}, {"net-int", "05cccccccccccc"}} {
		for i := 0; i < 2; i++ {
			if err := b.drv.DeleteEndpoint(b.ctx, ep.e); err != nil {
				t.Fatalf("DeleteEndpoint %s (%d): %v", ep.e, i, err)
			}
		}
	}
	for _, n := range []string{"net-web", "net-gw", "net-int", "net-web"} {
		if err := b.drv.DeleteNetwork(b.ctx, n); err != nil {
			t.Fatalf("DeleteNetwork %s: %v", n, err)
		}
	}
	if left := testkit.Sh(t, "ip -br link | grep -E '^(tn|tp|tartan\\.)' || true"); strings.TrimSpace(left) != "" {
		t.Fatalf("links left: %s", left)
	}
	if left := testkit.Sh(t, "ip route show proto 84; ip route show proto 85"); strings.TrimSpace(left) != "" {
		t.Fatalf("routes left: %s", left)
	}
	if n := conntrackOf(t, "10.244.0.3"); n != 0 {
		t.Fatalf("%d connection tracking entries of a deleted endpoint's address left", n)
	}
	if fw := testkit.Sh(t, "iptables-save"); strings.Contains(fw, "TARTAN") {
		t.Fatalf("firewall rules left with no network:\n%s", fw)
	}
	if ps, _, _ := b.local.List(b.ctx, "local/"); len(ps) != 0 {
		t.Fatalf("local records left: %v", ps)
	}
}

// TestRoutedPoolOverUnderlay: a vxlan or host-gw network over the underlay's
// subnet (10.77.0.0/24 on under0) is refused before anything is made; before
// the fix both were created and captured the hosts' own segment.
func TestRoutedPoolOverUnderlay(t *testing.T) {
	b := newBed(t)
	for _, c := range []struct{ id, pool, backend string }{{"net-lan", "10.77.0.0/24", "vxlan"}, {"net-lan16", "10.77.0.0/16", "host-gw"}} {
		err := b.network(c.id, c.pool, generic("tartan.backend", c.backend))
		if err == nil || !strings.Contains(err.Error(), "overlaps this host's underlay network 10.77.0.0/24 (on under0)") {
			t.Fatalf("%s %s: %v", c.backend, c.pool, err)
		}
		if _, err := b.store.Get(b.ctx, kv.NetworkPath(c.pool)); err == nil {
			t.Fatalf("%s: a refused network left its cluster record", c.pool)
		}
	}
}

// TestPublishedPortConflicts: through ProgramExternalConnectivity, a host
// port another endpoint publishes or a process of the namespace listens on
// is refused. Before the fix every one of these calls succeeded.
func TestPublishedPortConflicts(t *testing.T) {
	b := newBed(t)
	if err := b.network("net-ports", "10.248.0.0/16", generic("tartan.backend", "host-gw")); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := b.drv.DeleteNetwork(b.ctx, "net-ports"); err != nil {
			t.Errorf("DeleteNetwork: %v", err)
		}
	}()
	for i, ep := range []string{"0aaaaaaaaaaaaa", "0bbbbbbbbbbbbb"} {
		if _, err := b.drv.CreateEndpoint(b.ctx, driver.EndpointRequest{NetworkID: "net-ports", EndpointID: ep,
			Addr: netip.MustParsePrefix(fmt.Sprintf("10.248.0.%d/32", i+2)), MAC: "02:42:0a:f8:00:0" + fmt.Sprint(i+2)}); err != nil {
			t.Fatal(err)
		}
	}
	publish := func(ep string, proto int, hostIP string, hostPort int) error {
		return b.drv.PublishPorts(b.ctx, ep, []driver.PortRequest{{Proto: map[int]string{6: "tcp", 17: "udp"}[proto], Port: 80, HostIP: hostIP, HostPort: hostPort}})
	}
	if err := publish("0aaaaaaaaaaaaa", 6, "", 18090); err != nil {
		t.Fatal(err)
	}
	if err := publish("0aaaaaaaaaaaaa", 6, "", 18090); err != nil {
		t.Fatalf("the same ports again: %v", err)
	}
	for _, hostIP := range []string{"", "10.77.0.1"} {
		if err := publish("0bbbbbbbbbbbbb", 6, hostIP, 18090); err == nil || !strings.Contains(err.Error(), "port 18090/tcp is already published by endpoint 0aaaaaaaaaaa on this host") {
			t.Fatalf("second endpoint on 18090 (host ip %q): %v", hostIP, err)
		}
	}
	tl, err := net.Listen("tcp4", "0.0.0.0:18091")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	if err := publish("0bbbbbbbbbbbbb", 6, "", 18091); err == nil || !strings.Contains(err.Error(), "port 18091/tcp is in use on this host (a process listens on 0.0.0.0:18091/tcp)") {
		t.Fatalf("port of a listening socket: %v", err)
	}
	ul, err := net.ListenPacket("udp", "127.0.0.1:18092")
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	if err := publish("0bbbbbbbbbbbbb", 17, "", 18092); err == nil || !strings.Contains(err.Error(), "port 18092/udp is in use on this host") {
		t.Fatalf("port of a bound udp socket: %v", err)
	}
	if err := publish("0bbbbbbbbbbbbb", 6, "", 18093); err != nil {
		t.Fatal(err)
	}
	// Withdrawn ports are free again.
	if err := b.drv.WithdrawPorts(b.ctx, "0aaaaaaaaaaaaa"); err != nil {
		t.Fatal(err)
	}
	if err := publish("0bbbbbbbbbbbbb", 6, "", 18090); err != nil {
		t.Fatalf("18090 after its holder withdrew it: %v", err)
	}
	// A holder whose veth is gone (its container ended without Docker
	// removing the endpoint) does not keep the port: its rule leads nowhere.
	testkit.Sh(t, "ip link del tn0bbbbbbbbbb")
	if err := publish("0aaaaaaaaaaaaa", 6, "", 18090); err != nil {
		t.Fatalf("18090 held by an endpoint without its veth: %v", err)
	}
	if out := testkit.Sh(t, "iptables -t nat -S "+firewall.DNATChain); !strings.Contains(out, "--dport 18090 -j DNAT --to-destination 10.248.0.2:80") || strings.Contains(out, "10.248.0.3") {
		t.Fatalf("dnat rules:\n%s", out)
	}
}

// macvlan plays Docker's part for a macvlan endpoint: create, join, move the
// link into namespace ns with the pool's mask and the gateway Join returns.
func (b *bed) macvlan(netID, epID, ns, ip string) backend.Join {
	t := b.t
	t.Helper()
	if _, err := b.drv.CreateEndpoint(b.ctx, driver.EndpointRequest{NetworkID: netID, EndpointID: epID,
		Addr: netip.MustParsePrefix(ip + "/24"), MAC: "02:42:0a:63:00:" + epID[:2]}); err != nil {
		t.Fatalf("CreateEndpoint: %v", err)
	}
	j, err := b.drv.Join(b.ctx, epID)
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	if len(j.Routes) != 0 {
		t.Fatalf("a macvlan endpoint got routes: %+v", j.Routes)
	}
	forget := testkit.RecordNS(ns)
	testkit.Sh(t, fmt.Sprintf("ip netns del %[1]s 2>/dev/null; ip netns add %[1]s && ip link set %[2]s netns %[1]s && ip -n %[1]s link set %[2]s name eth0 && ip -n %[1]s addr add %[3]s/24 dev eth0 && ip -n %[1]s link set eth0 up && ip -n %[1]s link set lo up",
		ns, j.Interface, ip))
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run(); forget() })
	if j.Gateway.IsValid() {
		testkit.Sh(t, fmt.Sprintf("ip -n %s route add default via %s dev eth0", ns, j.Gateway))
	}
	return j
}

func (b *bed) macvlanNetwork(id, pool, gateway string, opts map[string]any) error {
	im := ipam.New(b.store, ipam.Config{Host: "h1"}, logrus.New())
	pid, err := im.RequestPool(b.ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: pool})
	if err != nil {
		b.t.Fatal(err)
	}
	// Docker reserves the gateway before it creates the network.
	if gw, err := netip.ParsePrefix(gateway); err == nil && pid.CIDR.Contains(gw.Addr()) {
		if _, err := im.RequestAddress(b.ctx, ipam.AddressRequest{Pool: pid, Address: gw.Addr().String(),
			Options: map[string]string{ipam.OptRequestType: ipam.GatewayType}}); err != nil {
			b.t.Fatal(err)
		}
	}
	gw, _ := netip.ParsePrefix(gateway) // invalid: no --gateway
	return b.drv.CreateNetwork(b.ctx, driver.NetworkRequest{ID: id, Options: opts, Space: ipam.LocalSpace, Pool: netip.MustParsePrefix(pool), Gateway: gw})
}

func TestMacvlan(t *testing.T) {
	b := newBed(t)
	// The "physical" segment: mvp0 here, mvp1 in a router namespace that
	// holds the gateway 10.99.0.1 and, behind it, 198.51.100.1.
	forget := testkit.RecordNS("tdp-rt")
	testkit.Sh(t, "ip link del mvp0 2>/dev/null; ip netns del tdp-rt 2>/dev/null; ip link add mvp0 mtu 1500 type veth peer name mvp1 && ip link set mvp0 up && ip netns add tdp-rt && ip link set mvp1 netns tdp-rt && ip -n tdp-rt addr add 10.99.0.1/24 dev mvp1 && ip -n tdp-rt link set mvp1 up && ip -n tdp-rt addr add 198.51.100.1/32 dev lo && ip -n tdp-rt link set lo up")
	t.Cleanup(func() { _ = exec.Command("sh", "-c", "ip netns del tdp-rt; ip link del mvp0").Run(); forget() })
	mv := func(kv ...string) map[string]any {
		return generic(append([]string{"tartan.backend", "macvlan"}, kv...)...)
	}

	// Bad input first: each refused, nothing left behind.
	for _, c := range []struct {
		opts map[string]any
		gw   string
		word string
	}{
		{mv("parent", "nope0"), "10.99.0.1/24", "parent interface nope0 does not exist on this host"},
		{mv("parent", "nope0.100"), "10.99.0.1/24", "its base interface nope0 does not exist"},
		{mv("parent", "mvp0", "com.docker.network.driver.mtu", "9000"), "10.99.0.1/24", "larger than parent mvp0 allows (1500)"},
		{mv("parent", "mvp0"), "10.98.0.1/24", "gateway 10.98.0.1/24 is outside subnet 10.99.0.0/24"},
		{mv("parent", "lo"), "10.99.0.1/24", "parent lo is not an Ethernet interface"},
	} {
		if err := b.macvlanNetwork("mv-bad", "10.99.0.0/24", c.gw, c.opts); err == nil || !strings.Contains(err.Error(), c.word) {
			t.Errorf("%v: %v, want %q", c.opts, err, c.word)
		}
	}
	// A VLAN parent: made and removed with the network where the kernel has
	// 802.1q, a clear error where it has not.
	err := b.macvlanNetwork("mv-vlan", "10.97.0.0/24", "10.97.0.1/24", mv("parent", "mvp0.100"))
	if err == nil {
		if out := testkit.Sh(t, "ip -d link show mvp0.100"); !strings.Contains(out, "vlan protocol 802.1Q id 100") {
			t.Fatalf("VLAN parent:\n%s", out)
		}
		if err := b.drv.DeleteNetwork(b.ctx, "mv-vlan"); err != nil {
			t.Fatal(err)
		}
		if kernel.LinkExists("mvp0.100") {
			t.Fatal("the VLAN link tartan made outlived its network")
		}
	} else if !strings.Contains(err.Error(), "this kernel has no 802.1q support") {
		t.Fatalf("VLAN parent: %v", err)
	}
	if kernel.LinkExists("mvp0.100") {
		t.Fatal("a refused VLAN parent was left behind")
	}

	if err := b.macvlanNetwork("mv-net", "10.99.0.0/24", "10.99.0.1/24", mv("parent", "mvp0", "tartan.hostaccess", "true")); err != nil {
		t.Fatal(err)
	}
	if err := b.macvlanNetwork("mv-two", "10.96.0.0/24", "10.96.0.1/24", mv("parent", "mvp0", "macvlan_mode", "private")); err == nil || !strings.Contains(err.Error(), "parent mvp0 is already used by tartan macvlan network mv-net (bridge mode)") {
		t.Fatalf("second network on a bridge-mode parent: %v", err)
	}
	shim := testkit.Sh(t, "ip -d -4 addr show tmmv-net")
	if !strings.Contains(shim, "macvlan mode bridge") || !strings.Contains(shim, "mtu 1500") {
		t.Fatalf("shim:\n%s", shim)
	}
	j := b.macvlan("mv-net", "11dddddddddddd", "tdp-m1", "10.99.0.11")
	b.macvlan("mv-net", "12dddddddddddd", "tdp-m2", "10.99.0.12")
	if j.Gateway.String() != "10.99.0.1" {
		t.Fatalf("gateway %q, want the physical router 10.99.0.1", j.Gateway)
	}
	if out := testkit.Sh(t, "ip netns exec tdp-m1 ip -d link show eth0"); !strings.Contains(out, "macvlan mode bridge") {
		t.Fatalf("container link:\n%s", out)
	}
	for _, c := range [][2]string{{"tdp-m1", "10.99.0.12"}, {"tdp-m1", "10.99.0.1"}, {"tdp-m2", "198.51.100.1"}} {
		if !pings(c[0], c[1]) {
			t.Fatalf("%s does not reach %s (another container, the gateway, beyond it):\n%s", c[0], c[1], testkit.Sh(t, "ip netns exec "+c[0]+" ip -d addr; ip netns exec "+c[0]+" ip route; ip -d link show mvp0"))
		}
	}
	if out := testkit.Sh(t, "ip netns exec tdp-m1 ip neigh show 10.99.0.12"); !strings.Contains(out, "02:42:0a:63:00:12") {
		t.Fatalf("neighbour 10.99.0.12 not resolved straight to the container's MAC:\n%s", out)
	}
	// Host access through the shim, with a route per local container.
	routes := testkit.Sh(t, "ip route show proto 84")
	if !strings.Contains(routes, "10.99.0.11 dev tmmv-net") || !strings.Contains(routes, "10.99.0.12 dev tmmv-net") {
		t.Fatalf("shim routes:\n%s", routes)
	}
	if !pings("", "10.99.0.11") {
		t.Fatal("the host does not reach its container through the shim")
	}
	if err := b.drv.PublishPorts(b.ctx, "11dddddddddddd", []driver.PortRequest{{Proto: "tcp", Port: 80, HostPort: 8080}}); err == nil || !strings.Contains(err.Error(), "reachable at its own address 10.99.0.11") {
		t.Fatalf("-p on macvlan: %v", err)
	}
	if nat := testkit.Sh(t, "iptables-save -t nat"); strings.Contains(nat, "10.99.0.0") {
		t.Fatalf("macvlan network in the firewall:\n%s", nat)
	}

	// Restart: the shim and its routes come back, a stray shim goes.
	testkit.Sh(t, "ip link del tmmv-net; ip link add tm0123456789a link mvp0 type macvlan mode bridge")
	b.restart()
	if err := b.drv.Reconcile(b.ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	time.Sleep(400 * time.Millisecond) // the stray shim's grace period
	if err := b.drv.Reconcile(b.ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if kernel.LinkExists("tm0123456789a") || !kernel.LinkExists("tmmv-net") {
		t.Fatal("reconcile did not repair the shim or kept a stray one")
	}
	if !pings("", "10.99.0.12") || !pings("tdp-m2", "10.99.0.11") {
		t.Fatal("no host access or connectivity after the restart")
	}

	for i := 0; i < 2; i++ {
		for _, ep := range []string{"11dddddddddddd", "12dddddddddddd"} {
			if err := b.drv.DeleteEndpoint(b.ctx, ep); err != nil {
				t.Fatalf("DeleteEndpoint %s: %v", ep, err)
			}
		}
		if err := b.drv.DeleteNetwork(b.ctx, "mv-net"); err != nil {
			t.Fatalf("DeleteNetwork: %v", err)
		}
	}
	if left := testkit.Sh(t, "ip -br link | grep -E '^(tn|tp|tm|tartan\\.)' || true; ip route show proto 84"); strings.TrimSpace(left) != "" {
		t.Fatalf("left behind: %s", left)
	}
	addrs, _, _ := b.store.List(b.ctx, kv.AddressPrefix("10.99.0.0/24"))
	for _, a := range addrs {
		if !strings.HasSuffix(a.Key, "10.99.0.1") && !kv.IsFolder(a.Key) {
			t.Fatalf("the shim's address is still reserved: %v", a.Key)
		}
	}
}

// H2: block records that only overlap the pool ("0.0.0.0/0", "10.0.0.0/8")
// became routes via their host; RouteReplace then overwrote the host's
// default route. Before the fix the default route below was replaced by
// one via 10.77.0.2 dev tartan.N; now only the real block is routed.
func TestForeignBlockRecordsAreNotRouted(t *testing.T) {
	b := newBed(t)
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	pool := "10.232.0.0/16"
	// This host's own registration, as the plugin writes it (a listing
	// without it is not trusted for pruning).
	if _, err := kv.PutJSON(b.ctx, b.store, kv.HostPath("h1"), kv.Host{ID: "h1", Address: "10.77.0.1", Renewed: time.Now().UTC()}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutJSON(b.ctx, b.store, kv.HostPath("h2"), kv.Host{ID: "h2", Address: "10.77.0.2", Renewed: time.Now().UTC()}, 0); err != nil {
		t.Fatal(err)
	}
	for _, cidr := range []string{"10.232.0.64/26", "0.0.0.0/0", "10.0.0.0/8"} {
		blk := kv.Block{CIDR: cidr, Pool: pool, Host: "h2", Expires: time.Now().Add(time.Hour).UTC()}
		if _, err := kv.PutJSON(b.ctx, b.store, kv.BlockPath(pool, cidr), blk, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.network("net-h2", pool, generic("tartan.backend", "vxlan")); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := b.drv.DeleteNetwork(b.ctx, "net-h2"); err != nil {
			t.Error(err)
		}
	}()
	before := testkit.Sh(t, "ip route show default")
	b.drv.Start(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(testkit.Sh(t, "ip route show proto 84"), "10.232.0.64/26 via 10.77.0.2") {
		if time.Now().After(deadline) {
			t.Fatalf("the peer's block was not routed:\n%s\n%s", testkit.Sh(t, "ip route show proto 84"), b.drv.PeerState())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if after := testkit.Sh(t, "ip route show default"); after != before {
		t.Fatalf("default route changed:\n%s\nnow\n%s", before, after)
	}
	if routes := testkit.Sh(t, "ip route show proto 84"); strings.Contains(routes, "10.0.0.0/8") || strings.Contains(routes, "default") {
		t.Fatalf("foreign blocks were routed:\n%s", routes)
	}
	if state := b.drv.PeerState(); strings.Count(state, "not inside the network's pool") != 2 {
		t.Fatalf("want a problem per foreign block: %s", state)
	}
}

// Another program's VXLAN device that receives the network's VNI
// on tartan's port (flannel's flannel.1 has VNI 1 on 8472, Cilium takes
// every VNI on 8472) made CreateNetwork fail with the kernel's bare "file
// exists". Now the error names the device and the two ways out, nothing is
// left behind, and the create works once the port is free.
func TestForeignVXLANDevice(t *testing.T) {
	b := newBed(t)
	testkit.Sh(t, "ip link add fl.300 type vxlan id 300 dstport 8472 dev under0")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "fl.300").Run() })
	err := b.network("net-fl", "10.230.0.0/16", generic("tartan.vni", "300"))
	if err == nil || !strings.Contains(err.Error(), "fl.300") || !strings.Contains(err.Error(), "VXLAN_PORT") || !strings.Contains(err.Error(), "tartan.vni") {
		t.Fatalf("a VNI another device receives on the port: %v", err)
	}
	if kernel.LinkExists("tartan.300") {
		t.Fatal("the refused network left its VXLAN device behind")
	}
	if _, err := b.store.Get(b.ctx, kv.VNIPath(300)); err == nil {
		t.Fatal("the refused network left its VNI claim behind")
	}
	testkit.Sh(t, "ip link del fl.300")
	if err := b.network("net-fl", "10.230.0.0/16", generic("tartan.vni", "300")); err != nil {
		t.Fatalf("once the port is free: %v", err)
	}
	if err := b.drv.DeleteNetwork(b.ctx, "net-fl"); err != nil {
		t.Fatal(err)
	}
}

// counters are the fast path's counters now (empty when it is off).
func (b *bed) counters() map[string]uint64 {
	b.t.Helper()
	_, _, c, err := b.drv.FastPath()
	if err != nil {
		b.t.Fatal(err)
	}
	return c
}

// conntrackOf counts the connection tracking entries that name ip.
func conntrackOf(t *testing.T, ip string) int {
	t.Helper()
	flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
	if err != nil {
		t.Fatalf("list connection tracking entries: %v", err)
	}
	n := 0
	for _, f := range flows {
		for _, a := range []net.IP{f.Forward.SrcIP, f.Forward.DstIP, f.Reverse.SrcIP, f.Reverse.DstIP} {
			if a.String() == ip {
				n++
				break
			}
		}
	}
	return n
}

// Issue 24, audit L1: host IPsec policies are seen (the plugin then keeps
// the fast path off: its packets would go around them).
func TestIPsecPoliciesSeen(t *testing.T) {
	testkit.Require(t, os.Getenv(inNetns) != "", "needs root: it runs in a network namespace of its own")
	if has, err := kernel.HasIPsecPolicies(); err != nil || has {
		t.Fatalf("before any policy: %v %v", has, err)
	}
	testkit.Sh(t, "ip xfrm policy add src 10.0.0.1/32 dst 10.0.0.2/32 dir out tmpl proto esp mode transport")
	defer testkit.Sh(t, "ip xfrm policy flush")
	if has, err := kernel.HasIPsecPolicies(); err != nil || !has {
		t.Fatalf("with a policy: %v %v", has, err)
	}
}

// Issue 29: tartan doctor names every difference of a local endpoint's host
// side that the resync repairs: its route, its link-local gateway address,
// its veth down; the resync repairs each, and doctor is clean again.
func TestLocalEndpointDrift(t *testing.T) {
	b := newBed(t)
	if err := b.network("net-dr", "10.248.0.0/16", generic("tartan.backend", "vxlan")); err != nil {
		t.Fatal(err)
	}
	b.container("net-dr", "0ddddddddddddd", "tdp-dr", "10.248.0.5")
	t.Cleanup(func() {
		_ = b.drv.DeleteEndpoint(b.ctx, "0ddddddddddddd")
		_ = b.drv.DeleteNetwork(b.ctx, "net-dr")
	})
	if d, err := b.drv.EndpointDrift(); err != nil || len(d) != 0 {
		t.Fatalf("drift of a healthy endpoint: %v %v", d, err)
	}
	host, _ := kernel.EndpointNames("0ddddddddddddd")
	testkit.Sh(t, fmt.Sprintf("ip route del 10.248.0.5/32 dev %[1]s; ip addr del 169.254.1.1/32 dev %[1]s; ip link set %[1]s down", host))
	d, err := b.drv.EndpointDrift()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(d, "\n")
	for _, want := range []string{"its link " + host + " is down", "lacks the gateway address 169.254.1.1", "missing route 10.248.0.5/32 dev " + host} {
		if !strings.Contains(got, want) {
			t.Fatalf("drift does not say %q:\n%s", want, got)
		}
	}
	if err := b.drv.Reconcile(b.ctx); err != nil {
		t.Fatal(err)
	}
	if d, err := b.drv.EndpointDrift(); err != nil || len(d) != 0 {
		t.Fatalf("drift after the resync: %v %v", d, err)
	}
	if !pings("tdp-dr", "169.254.1.1") {
		t.Fatal("the container does not reach its gateway after the repair")
	}
}
