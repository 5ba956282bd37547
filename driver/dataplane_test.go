package driver_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// The data-plane tests run in a network namespace of their own: TestMain
// re-executes the test binary under "unshare --net", so every veth, route,
// VXLAN device and iptables rule they make lives and dies with it.
const inNetns = "TARTAN_TEST_IN_NETNS"

func TestMain(m *testing.M) {
	if os.Getenv(inNetns) == "" && os.Geteuid() == 0 {
		if _, err := exec.LookPath("unshare"); err == nil {
			cmd := exec.Command("unshare", append([]string{"--net", "--", os.Args[0]}, os.Args[1:]...)...)
			cmd.Env = append(os.Environ(), inNetns+"=1")
			cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				if ee, ok := err.(*exec.ExitError); ok {
					os.Exit(ee.ExitCode())
				}
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}

type bed struct {
	t     *testing.T
	drv   *driver.Driver
	local kv.Store
	store kv.Store
	fw    *firewall.Firewall
	ctx   context.Context
}

func sh(t *testing.T, cmd string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return string(out)
}

func newBed(t *testing.T) *bed {
	testbed.Require(t, os.Getenv(inNetns) != "", "data-plane tests need root and unshare (they run in their own network namespace)")
	testbed.RequireRoot(t, "ip", "iptables", "busybox")
	// An underlay: a veth with an address and a default route.
	if !kernel.LinkExists("under0") {
		sh(t, "ip link set lo up; ip link add under0 mtu 1500 type veth peer name under1 && ip addr add 10.77.0.1/24 dev under0 && ip link set under0 up && ip link set under1 up && ip route add default via 10.77.0.254")
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
	b.drv = driver.New(b.store, b.local, b.fw, driver.Config{Host: "h1", Advertise: "under0"}, log)
	if err := b.drv.Restore(b.ctx); err != nil {
		b.t.Fatal(err)
	}
}

func (b *bed) network(id, pool string, opts map[string]any) error {
	return b.drv.CreateNetwork(b.ctx, &network.CreateNetworkRequest{NetworkID: id, Options: opts,
		IPv4Data: []*network.IPAMData{{AddressSpace: ipam.LocalSpace, Pool: pool}}})
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
	if _, err := b.drv.CreateEndpoint(b.ctx, &network.CreateEndpointRequest{NetworkID: netID, EndpointID: epID,
		Interface: &network.EndpointInterface{Address: ip + "/32", MacAddress: "02:42:0a:00:00:" + epID[:2]}}); err != nil {
		t.Fatalf("CreateEndpoint: %v", err)
	}
	j, err := b.drv.Join(&network.JoinRequest{NetworkID: netID, EndpointID: epID, SandboxKey: "/run/netns/" + ns})
	if err != nil {
		t.Fatalf("Join: %v", err)
	}
	sh(t, fmt.Sprintf("ip netns del %[1]s 2>/dev/null; ip netns add %[1]s && ip link set %[2]s netns %[1]s && ip -n %[1]s link set %[2]s name %[3]s0 && ip -n %[1]s addr add %[4]s/32 dev %[3]s0 && ip -n %[1]s link set %[3]s0 up && ip -n %[1]s link set lo up",
		ns, j.InterfaceName.SrcName, j.InterfaceName.DstPrefix, ip))
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	for _, r := range j.StaticRoutes {
		if r.RouteType == 1 {
			sh(t, fmt.Sprintf("ip -n %s route add %s dev eth0", ns, r.Destination))
		} else {
			sh(t, fmt.Sprintf("ip -n %s route add %s via %s dev eth0", ns, r.Destination, r.NextHop))
		}
	}
	if j.Gateway != "" {
		sh(t, fmt.Sprintf("ip -n %s route add default via %s dev eth0", ns, j.Gateway))
	}
}

func pings(ns, ip string) bool {
	return exec.Command("ip", "netns", "exec", ns, "busybox", "ping", "-c1", "-W1", ip).Run() == nil
}

func TestNetworkLifecycleAndDataPath(t *testing.T) {
	b := newBed(t)
	if err := b.network("net-web", "10.244.0.0/16", generic("tartan.backend", "vxlan")); err != nil {
		t.Fatal(err)
	}
	vx := sh(t, "ip -d link show tartan.1")
	for _, want := range []string{"mtu 1450", "vxlan id 1", "local 10.77.0.1", "dev under0", "dstport 8472", "nolearning"} {
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
	if kernel.LinkExists("tartan.2") {
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
	routes := sh(t, "ip route show proto 84")
	for _, want := range []string{"10.244.0.2 dev tn01aaaaaaaaa", "10.246.0.2 dev tn03bbbbbbbbb"} {
		if !strings.Contains(routes, want) {
			t.Fatalf("routes lack %q:\n%s", want, routes)
		}
	}
	if !pings("tdp-c1", "10.244.0.3") || !pings("tdp-c2", "10.244.0.2") {
		t.Fatal("containers on one network do not reach each other")
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
	nat := sh(t, "iptables -t nat -S "+firewall.PostroutingChain)
	if !strings.Contains(nat, "-s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE") || strings.Contains(nat, "10.247.0.0/16") {
		t.Fatalf("nat rules:\n%s", nat)
	}
	// Published ports: DNAT plus a forward accept, withdrawn on revoke.
	pm := map[string]any{"com.docker.network.portmap": []map[string]any{{"Proto": 6, "IP": "10.244.0.2", "Port": 8080, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}}}
	if err := b.drv.ProgramExternalConnectivity(b.ctx, &network.ProgramExternalConnectivityRequest{NetworkID: "net-web", EndpointID: "01aaaaaaaaaaaa", Options: pm}); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, "iptables -t nat -S "+firewall.DNATChain); !strings.Contains(out, "--dport 18080 -j DNAT --to-destination 10.244.0.2:8080") {
		t.Fatalf("dnat rules:\n%s", out)
	}
	if out := sh(t, "iptables -S "+firewall.ForwardChain); !strings.Contains(out, "-d 10.244.0.2/32 -p tcp -m tcp --dport 8080 -j ACCEPT") {
		t.Fatalf("forward rules:\n%s", out)
	}
	noHostPort := map[string]any{"com.docker.network.portmap": []map[string]any{{"Proto": 6, "Port": 80}}}
	if err := b.drv.ProgramExternalConnectivity(b.ctx, &network.ProgramExternalConnectivityRequest{NetworkID: "net-web", EndpointID: "02aaaaaaaaaaaa", Options: noHostPort}); err == nil || !strings.Contains(err.Error(), "use -p HOSTPORT:80") {
		t.Fatalf("port without a host port: %v", err)
	}
	if err := b.drv.RevokeExternalConnectivity(b.ctx, &network.RevokeExternalConnectivityRequest{NetworkID: "net-web", EndpointID: "01aaaaaaaaaaaa"}); err != nil {
		t.Fatal(err)
	}
	if out := sh(t, "iptables -t nat -S "+firewall.DNATChain); strings.Contains(out, "18080") {
		t.Fatalf("dnat rule left after revoke:\n%s", out)
	}
	info, err := b.drv.EndpointInfo(&network.InfoRequest{NetworkID: "net-web", EndpointID: "01aaaaaaaaaaaa"})
	if err != nil || info.Value["tartan.backend"] != "vxlan" || info.Value["tartan.host"] != "h1" || info.Value["tartan.vni"] != "1" {
		t.Fatalf("oper info: %v %v", info, err)
	}

	// Restart: a new driver from the same local state adopts everything,
	// repairs what was deleted by hand and removes only stray objects it owns.
	sh(t, "ip link del tartan.1; ip route del 10.244.0.3/32; ip link add tn0123456789a type veth peer name tnfoo")
	b.restart()
	if err := b.drv.Reconcile(b.ctx); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	if !kernel.LinkExists("tartan.1") || !strings.Contains(sh(t, "ip route show proto 84"), "10.244.0.3 dev") {
		t.Fatal("reconcile did not repair the VXLAN device and the route")
	}
	if kernel.LinkExists("tn0123456789a") {
		t.Fatal("reconcile kept a stray endpoint link")
	}
	if !pings("tdp-c1", "10.244.0.3") {
		t.Fatal("no connectivity after the restart")
	}
	sh(t, "ip link del tnfoo 2>/dev/null || true")

	// Deletes are idempotent and leave nothing behind.
	for _, ep := range []struct{ n, e string }{{"net-web", "01aaaaaaaaaaaa"}, {"net-web", "02aaaaaaaaaaaa"}, {"net-gw", "03bbbbbbbbbbbb"}, {"net-int", "04cccccccccccc"}, {"net-int", "05cccccccccccc"}} {
		for i := 0; i < 2; i++ {
			if err := b.drv.DeleteEndpoint(b.ctx, &network.DeleteEndpointRequest{NetworkID: ep.n, EndpointID: ep.e}); err != nil {
				t.Fatalf("DeleteEndpoint %s (%d): %v", ep.e, i, err)
			}
		}
	}
	for _, n := range []string{"net-web", "net-gw", "net-int", "net-web"} {
		if err := b.drv.DeleteNetwork(b.ctx, &network.DeleteNetworkRequest{NetworkID: n}); err != nil {
			t.Fatalf("DeleteNetwork %s: %v", n, err)
		}
	}
	if left := sh(t, "ip -br link | grep -E '^(tn|tp|tartan\\.)' || true"); strings.TrimSpace(left) != "" {
		t.Fatalf("links left: %s", left)
	}
	if left := sh(t, "ip route show proto 84"); strings.TrimSpace(left) != "" {
		t.Fatalf("routes left: %s", left)
	}
	if fw := sh(t, "iptables -S "+firewall.ForwardChain); strings.Count(fw, "\n") != 1 {
		t.Fatalf("firewall rules left:\n%s", fw)
	}
	if ps, _, _ := b.local.List(b.ctx, "local/"); len(ps) != 0 {
		t.Fatalf("local records left: %v", ps)
	}
}

func TestOptionErrors(t *testing.T) {
	for _, c := range []struct {
		opts map[string]any
		word string
	}{
		{generic("tartan.backend", "ipvlan"), "unknown backend -o tartan.backend=ipvlan"},
		{generic("tartan.vni", "0"), "use a number from 1 to 16777215"},
		{generic("tartan.vni", "5", "tartan.backend", "host-gw"), "vxlan backend only"},
		{generic("tartan.directrouting", "maybe"), "not a boolean"},
		{generic("com.docker.network.driver.mtu", "12"), "not a usable MTU"},
		{generic("parent", "eth0"), "unknown option -o parent"},
		{map[string]any{"com.docker.network.enable_ipv6": true}, "IPv6"},
	} {
		_, err := driver.ParseNetworkOptions(c.opts)
		if err == nil || !strings.Contains(err.Error(), c.word) {
			t.Errorf("%v: %v, want %q", c.opts, err, c.word)
		}
	}
	o, err := driver.ParseNetworkOptions(generic("tartan.backend", "vxlan", "tartan.vni", "42", "tartan.directrouting", "true", "com.docker.network.driver.mtu", "1400", "com.docker.network.bridge.name", "ignored"))
	if err != nil || o.VNI != 42 || !o.DirectRouting || o.MTU != 1400 {
		t.Fatalf("%+v %v", o, err)
	}
}
