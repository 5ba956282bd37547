//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
)

type mhNet struct {
	name, subnet string
	opts         []string
}

// Three hosts, one network per backend created with the same --subnet on
// each: containers on every host reach containers on every other host (all
// pairs, ping and a TCP transfer), and each host holds exactly one route
// per remote block and, for VXLAN, one neighbour and one FDB entry per
// remote host, nothing stale.
func TestMultiHost(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "bridge", "curl", "busybox")
	c := testbed.NewCluster(t, "m", 1500)
	// Hosts 1 and 2 carry their networks on the eBPF fast path (the
	// default), host 3 on the kernel path (FASTPATH=off): the two meet.
	// Host 1 resyncs only when asked (tartan repair): doctorDrift damages
	// its kernel and must see the damage before a periodic resync repairs
	// it (TestMultiHostChurn shows the periodic repair).
	for i := 0; i < 3; i++ {
		settings := []string{"LOG_LEVEL=debug"}
		switch i {
		case 0:
			settings = append(settings, "RESYNC=1h")
		case 2:
			settings = append(settings, "FASTPATH=off")
		}
		c.AddHost(t, settings...)
	}
	nets := []mhNet{
		{"mvx", "10.61.0.0/16", []string{"-o", "tartan.backend=vxlan"}},
		{"mgw", "10.62.0.0/16", []string{"-o", "tartan.backend=host-gw"}},
		{"mdr", "10.63.0.0/16", []string{"-o", "tartan.backend=vxlan", "-o", "tartan.directrouting=true"}},
	}
	for _, n := range nets {
		for _, h := range c.Hosts {
			h.MustDocker(t, append(append([]string{"network", "create", tnet, tipam}, n.opts...), "--subnet", n.subnet, n.name)...)
		}
	}
	ips := map[string][]string{} // network -> container IP per host
	for _, n := range nets {
		for i, h := range c.Hosts {
			name := fmt.Sprintf("%s-%d", n.name, i+1)
			h.MustDocker(t, "run", "-d", "--name", name, "--network", n.name, "tbox", "sh", "-c",
				"mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1024 count=4096 2>/dev/null && httpd -f -p 8080 -h /www")
			ips[n.name] = append(ips[n.name], h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name))
		}
	}
	t.Logf("addresses: %v", ips)
	for _, n := range nets {
		for i, h := range c.Hosts {
			for j := range c.Hosts {
				if i == j {
					continue
				}
				target := ips[n.name][j]
				testbed.Eventually(t, 20*time.Second, fmt.Sprintf("%s: host %d reaches host %d's container %s", n.name, i+1, j+1, target), func() error {
					out, err := h.Docker("exec", fmt.Sprintf("%s-%d", n.name, i+1), "ping", "-c", "1", "-W", "1", target)
					if err != nil {
						return fmt.Errorf("%v: %s", err, out)
					}
					return nil
				})
				want := strings.Fields(c.Hosts[j].MustDocker(t, "exec", fmt.Sprintf("%s-%d", n.name, j+1), "md5sum", "/www/blob"))[0]
				got, err := h.Docker("exec", fmt.Sprintf("%s-%d", n.name, i+1), "sh", "-c", "wget -q -O - http://"+target+":8080/blob | md5sum")
				if err != nil || strings.Fields(got)[0] != want {
					t.Fatalf("%s: TCP transfer host %d <- host %d: %v %q (want %s)", n.name, i+1, j+1, err, got, want)
				}
			}
		}
	}
	// The fast path carried the transfers on hosts 1 and 2, both ways
	// (every network's traffic, vxlan, host-gw and direct routing, crossed
	// it); host 3 has none, and says why.
	for i, h := range c.Hosts {
		fp := hostStatus(t, h).FastPath
		if fp == nil {
			t.Fatalf("host %d: tartan status shows no fast path", i+1)
		}
		if i == 2 {
			if fp.On || len(fp.Attached) != 0 || !strings.Contains(h.PluginLog(), "FASTPATH=off: routed networks take the kernel path") {
				t.Fatalf("host 3 (FASTPATH=off): fast path %+v, or no log line saying so", *fp)
			}
			continue
		}
		t.Logf("host %d fast path: %d interfaces, packets %v", i+1, len(fp.Attached), fp.Packets)
		// (out_vxlan: encapsulated by the fast path itself, and taken by the
		// peers' VXLAN devices, host 3's kernel path among them.)
		if !fp.On || fp.Packets["out"] < 100 || fp.Packets["in"] < 100 || fp.Packets["out_vxlan"] < 100 {
			t.Fatalf("host %d: the fast path did not carry the transfers: %+v", i+1, *fp)
		}
	}
	// Exactly one route per remote block, one neighbour and FDB entry per
	// remote VXLAN peer, on every host.
	for i, h := range c.Hosts {
		routes := h.MustIP(t, "route", "show", "proto", "84")
		for _, n := range nets {
			prefix := strings.TrimSuffix(n.subnet, "0.0/16")
			var peerRoutes []string
			for _, l := range strings.Split(routes, "\n") {
				if strings.HasPrefix(l, prefix) && strings.Contains(l, " via ") {
					peerRoutes = append(peerRoutes, l)
				}
			}
			if len(peerRoutes) != 2 {
				t.Fatalf("host %d, %s: want 2 peer routes (one per remote block), got:\n%s", i+1, n.name, strings.Join(peerRoutes, "\n"))
			}
			for _, r := range peerRoutes {
				viaVXLAN := strings.Contains(r, "dev tartan.")
				if (n.name == "mvx") != viaVXLAN {
					t.Fatalf("host %d, %s: route %q goes the wrong way", i+1, n.name, r)
				}
			}
		}
		dev := ""
		for _, l := range strings.Split(h.MustIP(t, "-br", "link"), "\n") {
			if f := strings.Fields(l); len(f) > 0 && strings.HasPrefix(f[0], "tartan.") {
				if out, _ := h.IP("-d", "link", "show", f[0]); strings.Contains(out, "nolearning") {
					if rs := strings.Count(routes, "dev "+f[0]); rs == 2 {
						dev = f[0]
					}
				}
			}
		}
		if dev == "" {
			t.Fatalf("host %d: no VXLAN device carries the vxlan network's two routes:\n%s", i+1, routes)
		}
		neigh := h.MustIP(t, "neigh", "show", "dev", dev)
		if n := strings.Count(neigh, "PERMANENT"); n != 2 {
			t.Fatalf("host %d: %d permanent neighbours on %s, want 2:\n%s", i+1, n, dev, neigh)
		}
		fdb, err := h.Exec("bridge", "fdb", "show", "dev", dev)
		if err != nil || strings.Count(fdb, " dst ") != 2 {
			t.Fatalf("host %d: want 2 FDB entries on %s: %v\n%s", i+1, dev, err, fdb)
		}
	}
	// The operator's view matches: tartan status on each host shows its
	// three networks with one endpoint and a route per remote block (and
	// a neighbour and FDB entry per remote VTEP on vxlan), no problem;
	// tartan hosts shows the three hosts alive, each with one block per
	// pool, at the addresses they advertise.
	for i, h := range c.Hosts {
		st := hostStatus(t, h)
		if len(st.Networks) != 3 || !strings.HasPrefix(st.Store, "consul") {
			t.Fatalf("host %d: tartan status: %+v", i+1, st)
		}
		for _, n := range st.Networks {
			vx := n.Backend == "vxlan" && n.Device != "" && !strings.HasPrefix(n.Pool, "10.63.")
			if n.Endpoints != 1 || !n.Planned || n.Routes != 2 || len(n.Problems) > 0 || (vx && (n.Neighbors != 2 || n.FDB != 2)) {
				t.Fatalf("host %d: tartan status for %s: %+v", i+1, n.Pool, n)
			}
		}
		human := h.Tartan(t, "status")
		if !strings.Contains(human, st.Host) || !strings.Contains(human, "10.62.0.0/16") {
			t.Fatalf("host %d: tartan status:\n%s", i+1, human)
		}
		if i == 0 {
			t.Logf("tartan status on host 1:\n%s", human)
		}
	}
	var hosts []api.HostReport
	if err := json.Unmarshal([]byte(c.Hosts[0].Tartan(t, "hosts", "--json")), &hosts); err != nil {
		t.Fatal(err)
	}
	if len(hosts) != 3 {
		t.Fatalf("tartan hosts: %+v", hosts)
	}
	for _, hr := range hosts {
		if !hr.Known || !hr.Alive || len(hr.Blocks) != 3 || !slices.Contains(c.Addr, hr.Address) {
			t.Fatalf("tartan hosts: %+v (underlay addresses %v)", hr, c.Addr)
		}
	}
	t.Logf("tartan hosts:\n%s", c.Hosts[0].Tartan(t, "hosts"))
	var pools []api.PoolReport
	if err := json.Unmarshal([]byte(c.Hosts[1].Tartan(t, "networks", "--json")), &pools); err != nil {
		t.Fatal(err)
	}
	if len(pools) != 3 || pools[0].Network == nil || pools[0].Network.Backend != "vxlan" || pools[1].Network.Backend != "host-gw" || pools[0].Blocks != 3 {
		t.Fatalf("tartan networks: %+v", pools)
	}
	var addrs []api.AddressReport
	if err := json.Unmarshal([]byte(c.Hosts[0].Tartan(t, "addresses", "10.61.0.0/16", "--json")), &addrs); err != nil {
		t.Fatal(err)
	}
	mine := 0
	for _, a := range addrs {
		if a.Kind == kv.KindEndpoint && slices.Contains(ips["mvx"], a.IP) && (a.Endpoint != "") == (a.IP == ips["mvx"][0]) {
			mine++
		}
	}
	if mine != 3 {
		t.Fatalf("tartan addresses 10.61.0.0/16 on host 1 (containers %v, host 1's has its endpoint): %+v", ips["mvx"], addrs)
	}
	t.Logf("tartan networks:\n%s\ntartan addresses 10.61.0.0/16:\n%s", c.Hosts[0].Tartan(t, "networks"), c.Hosts[0].Tartan(t, "addresses", "10.61.0.0/16"))
	// -p 8080 on host 1: tartan picks a free port; host 2 reaches it on host
	// 1's address.
	c.Hosts[0].MustDocker(t, "run", "-d", "--name", "mpub", "--network", "mgw", "-p", "8080", "tbox",
		"sh", "-c", "mkdir -p /www && echo hello-ephemeral > /www/i && httpd -f -p 8080 -h /www")
	pubIP := c.Hosts[0].MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "mpub")
	hp := publishedPorts(t, c.Hosts[0], pubIP)["8080/tcp"]
	if hp == 0 {
		t.Fatalf("-p 8080 on host 1 published nothing:\n%s", c.Hosts[0].Tartan(t, "ports"))
	}
	testbed.Eventually(t, 15*time.Second, fmt.Sprintf("host 2 reaches host 1's -p 8080 on %s:%d", c.Addr[0], hp), func() error {
		out, err := c.Hosts[1].Exec("curl", "-s", "-m", "2", fmt.Sprintf("http://%s:%d/i", c.Addr[0], hp))
		if err != nil || strings.TrimSpace(out) != "hello-ephemeral" {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})
	c.Hosts[0].MustDocker(t, "rm", "-f", "mpub")
	doctorDrift(t, c)

	// Removing a network on one host disturbs nobody else.
	c.Hosts[2].MustDocker(t, "rm", "-f", "mvx-3")
	removeNetworks(t, c.Hosts[2], "mvx")
	testbed.Eventually(t, 20*time.Second, "host 3's vxlan block withdrawn from host 1", func() error {
		if r := c.Hosts[0].MustIP(t, "route", "show", "proto", "84"); strings.Count(r, "10.61.") != 2 { // own /32 + host 2's block
			return fmt.Errorf("routes:\n%s", r)
		}
		return nil
	})
	testbed.Eventually(t, time.Minute, "host 1 still reaches host 2 after host 3 left", func() error {
		if out, err := c.Hosts[0].Docker("exec", "mvx-1", "ping", "-c", "1", "-W", "2", ips["mvx"][1]); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	var wg sync.WaitGroup
	for _, h := range c.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = h.Docker("rm", "-f", "mvx-1", "mvx-2", "mgw-1", "mgw-2", "mgw-3", "mdr-1", "mdr-2", "mdr-3")
		}()
	}
	wg.Wait()
}

// doctorDrift: tartan doctor is clean on a healthy cluster; on host 1 it
// reports a peer route deleted by hand, a neighbour entry changed by hand,
// an address in the store that no container has, each with its fix, and
// exits 1 (a lapsed host: TestMultiHostChurn); tartan gc --yes takes the stray
// records, and doctor is clean again once tartan repair (the resync, run
// now) repaired the kernel. Host 1 has no periodic resync meanwhile
// (RESYNC=1h), so that what doctor is shown is what the test damaged.
func doctorDrift(t *testing.T, c *testbed.Cluster) {
	t.Helper()
	for i, h := range c.Hosts {
		if out, rc, errs := h.TartanRC(t, "doctor"); rc != 0 || !strings.Contains(out, "nothing wrong") {
			t.Fatalf("host %d: tartan doctor on a healthy cluster: exit %d\n%s%s", i+1, rc, out, errs)
		}
	}
	h := c.Hosts[0]
	st := hostStatus(t, h)
	var gw, vx *api.NetworkStatus
	for i, n := range st.Networks {
		switch n.Pool {
		case "10.62.0.0/16":
			gw = &st.Networks[i]
		case "10.61.0.0/16":
			vx = &st.Networks[i]
		}
	}
	route := ""
	for _, l := range strings.Split(h.MustIP(t, "route", "show", "proto", "84"), "\n") {
		if strings.HasPrefix(l, "10.62.") && strings.Contains(l, " via ") {
			route = strings.Fields(l)[0]
			break
		}
	}
	neigh := strings.Fields(strings.Split(strings.TrimSpace(h.MustIP(t, "neigh", "show", "dev", vx.Device)), "\n")[0])[0]
	// A network record Docker does not have (as one deleted while the
	// plugin was away leaves): made here through the plugin's socket, before the
	// damage below (its creation rewrites the firewall).
	ghost := strings.Repeat("feedface", 8)
	if out, err := h.PluginCall("/IpamDriver.RequestPool", `{"AddressSpace":"tartan-local","Pool":"10.64.0.0/16"}`); err != nil {
		t.Fatalf("request the ghost network's pool: %v %s", err, out)
	}
	if out, err := h.PluginCall("/NetworkDriver.CreateNetwork", fmt.Sprintf(`{"NetworkID":%q,"Options":{"com.docker.network.generic":{"tartan.backend":"host-gw"}},"IPv4Data":[{"AddressSpace":"tartan-local","Pool":"10.64.0.0/16"}]}`, ghost)); err != nil {
		t.Fatalf("create the ghost network: %v %s", err, out)
	}
	if out, err := h.Exec(testbed.Iptables(), "-D", "INPUT", "-j", firewall.InputChain); err != nil {
		t.Fatalf("delete tartan's INPUT jump: %v %s", err, out)
	}
	h.MustIP(t, "route", "del", route)
	h.MustIP(t, "neigh", "replace", neigh, "lladdr", "02:00:00:00:00:99", "dev", vx.Device, "nud", "permanent")
	// A local endpoint's host side (issue 29): its route, its link-local
	// gateway address, its veth up.
	epIP := h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "mgw-1")
	veth := strings.Fields(h.MustIP(t, "route", "show", epIP))[2]
	epGW := strings.Fields(h.MustIP(t, "-4", "-br", "addr", "show", "dev", veth))[2]
	h.MustIP(t, "route", "del", epIP+"/32", "dev", veth)
	h.MustIP(t, "addr", "del", epGW, "dev", veth)
	h.MustIP(t, "link", "set", veth, "down")
	created := time.Now().Add(-5 * time.Minute).UTC().Format(time.RFC3339)
	stray := fmt.Sprintf(`{"ip":"10.61.0.250","pool":"10.61.0.0/16","host":%q,"kind":"endpoint","created":%q}`, st.Host, created)
	if out, err := c.Consul.CLI("kv", "put", "tartan/addrs/10.61.0.0-16/10.61.0.250", stray); err != nil {
		t.Fatalf("consul kv put: %v %s", err, out)
	}
	out, rc, errs := h.TartanRC(t, "doctor")
	t.Logf("tartan doctor after the damage:\n%s", out)
	if rc != 1 {
		t.Fatalf("tartan doctor with drift: exit %d, want 1\n%s%s", rc, out, errs)
	}
	for _, want := range []string{"network " + gw.ID[:12] + ": missing route " + route, "network " + vx.ID[:12] + ": missing neighbour " + neigh,
		"extra neighbour " + neigh + " lladdr 02:00:00:00:00:99", `firewall: the jump "-A INPUT -j ` + firewall.InputChain + `" in table filter is missing`, "address 10.61.0.250 of pool 10.61.0.0/16", "fix: ",
		"network feedfacefeed (pool 10.64.0.0/16) is in tartan's records, but Docker has no such network here",
		"missing route " + epIP + "/32 dev " + veth, "its link " + veth + " is down", "lacks the gateway address " + strings.Split(epGW, "/")[0]} {
		if !strings.Contains(out, want) {
			t.Fatalf("tartan doctor does not say %q:\n%s", want, out)
		}
	}
	// tartan gc shows what the collection would take (the stray address,
	// the host gone for more than two lease lifetimes) and --yes takes it
	// now; the resync repairs the kernel.
	plan := h.Tartan(t, "gc")
	if !strings.Contains(plan, "would release address 10.61.0.250 of pool 10.61.0.0/16") ||
		!strings.Contains(plan, "would remove network record feedfacefeed (pool 10.64.0.0/16)") {
		t.Fatalf("tartan gc:\n%s", plan)
	}
	if got := h.Tartan(t, "gc", "--yes"); !strings.Contains(got, "released 1 orphaned addresses of this host; removed 0 gone hosts") ||
		!strings.Contains(got, "1 network records Docker no longer had") {
		t.Fatalf("tartan gc --yes:\n%s", got)
	}
	if out, err := h.PluginCall("/IpamDriver.ReleasePool", `{"PoolID":"local:10.64.0.0/16"}`); err != nil {
		t.Fatalf("release the ghost network's pool: %v %s", err, out)
	}
	if keys := c.Consul.Keys(t, "tartan/addrs/10.61.0.0-16/10.61.0.250"); len(keys) != 0 {
		t.Fatalf("%s left after tartan gc --yes", keys[0])
	}
	testbed.Eventually(t, 2*time.Minute, "tartan doctor clean again after tartan repair", func() error {
		if out, rc, errs := h.TartanRC(t, "repair"); rc != 0 {
			return fmt.Errorf("tartan repair: exit %d:\n%s%s", rc, out, errs)
		}
		if out, rc, errs := h.TartanRC(t, "doctor"); rc != 0 {
			return fmt.Errorf("exit %d:\n%s%s", rc, out, errs)
		}
		return nil
	})
}
