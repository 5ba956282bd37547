//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/kv"
)

// macvlan on three hosts whose "physical" NICs (eth1) share one L2 segment
// with an outside router: containers meet directly on the segment, reach the
// router as their gateway, and 3×30 containers started at once on three
// daemons get 90 distinct addresses from the cluster-wide IPAM, inside
// --ip-range and never an --aux-address.
func TestMacvlan(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "bridge", "curl", "busybox")
	c := testbed.NewCluster(t, "mv", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t, "LOG_LEVEL=debug")
	}
	// The router: on the segment with the gateway address, and 198.51.100.1
	// behind it standing for everything beyond.
	rt := c.AddRouter(t, "rt", "10.70.0.1/21")
	rt.MustIP(t, "addr", "add", "198.51.100.1/32", "dev", "lo")
	const (
		subnet  = "10.70.0.0/21"
		ipRange = "10.70.2.0/23"
		aux     = "10.70.2.10"
		beyond  = "198.51.100.1"
	)
	create := func(h *testbed.Host, extra ...string) {
		args := append([]string{"network", "create", tnet, tipam, "-o", "tartan.backend=macvlan", "-o", "parent=eth1",
			"--subnet", subnet, "--gateway", "10.70.0.1", "--ip-range", ipRange, "--aux-address", "printer=" + aux}, extra...)
		h.MustDocker(t, append(args, "mv")...)
	}
	create(c.Hosts[0], "-o", "tartan.hostaccess=true")
	create(c.Hosts[1])
	create(c.Hosts[2])

	t.Run("bad input", func(t *testing.T) { macvlanBadInput(t, c) })

	// One container per host: direct neighbours on the segment.
	macs := map[string]string{}
	ips := make([]string, 3)
	for i, h := range c.Hosts {
		name := fmt.Sprintf("mv-%d", i+1)
		h.MustDocker(t, "run", "-d", "--name", name, "--network", "mv", "tbox", "sleep", "3600")
		ips[i] = h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
		macs[ips[i]] = h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.MacAddress}}{{end}}", name)
		if gw := h.MustDocker(t, "exec", name, "ip", "route", "show", "default"); !strings.Contains(gw, "via 10.70.0.1 dev eth0") {
			t.Fatalf("host %d: container's default route %q, want via the router 10.70.0.1", i+1, gw)
		}
	}
	t.Logf("addresses %v, MACs %v", ips, macs)
	for i, h := range c.Hosts {
		name := fmt.Sprintf("mv-%d", i+1)
		for j := range c.Hosts {
			if i == j {
				continue
			}
			if out, err := h.Docker("exec", name, "ping", "-c", "2", "-W", "2", ips[j]); err != nil {
				t.Fatalf("host %d's container does not reach host %d's (%s): %v\n%s", i+1, j+1, ips[j], err, out)
			}
			// The peer's IP resolves to the peer container's own MAC: it
			// is on the segment, not behind a router or a tunnel.
			neigh := h.MustDocker(t, "exec", name, "ip", "neigh", "show", ips[j])
			if !strings.Contains(neigh, macs[ips[j]]) {
				t.Fatalf("host %d: neighbour %s is %q, want the container's MAC %s", i+1, ips[j], neigh, macs[ips[j]])
			}
		}
		if out, err := h.Docker("exec", name, "ping", "-c", "2", "-W", "2", beyond); err != nil {
			t.Fatalf("host %d's container does not reach %s through the router: %v\n%s", i+1, beyond, err, out)
		}
		// No routes, no encapsulation on the hosts.
		if r := h.MustIP(t, "route", "show", "proto", "84"); i > 0 && strings.TrimSpace(r) != "" {
			t.Fatalf("host %d has tartan routes for a macvlan network:\n%s", i+1, r)
		}
		if l := h.MustIP(t, "-br", "link"); strings.Contains(l, "tartan.") {
			t.Fatalf("host %d has a VXLAN device:\n%s", i+1, l)
		}
	}
	// Host access on host 1 only (the shim), and the kernel's rule without.
	if out, err := c.Hosts[0].Exec("busybox", "ping", "-c", "2", "-W", "2", ips[0]); err != nil {
		t.Fatalf("host 1 does not reach its container through the shim: %v\n%s", err, out)
	}
	c.Hosts[1].MustIP(t, "route", "add", subnet, "dev", "eth1")
	if out, err := c.Hosts[1].Exec("busybox", "ping", "-c", "1", "-W", "1", ips[1]); err == nil {
		t.Fatalf("host 2 reaches its own macvlan container through the parent, which the kernel should not allow:\n%s", out)
	}
	c.Hosts[1].MustIP(t, "route", "del", subnet, "dev", "eth1")
	// --ip of an address another host holds: refused, naming it.
	if out, err := c.Hosts[1].Docker("run", "-d", "--name", "mv-dup", "--network", "mv", "--ip", ips[0], "tbox", "sleep", "60"); err == nil || !strings.Contains(out, "address "+ips[0]+" is already in use") {
		t.Fatalf("--ip of host 1's address on host 2: %v\n%s", err, out)
	}
	_, _ = c.Hosts[1].Docker("rm", "-f", "mv-dup")
	for i, h := range c.Hosts {
		h.MustDocker(t, "rm", "-f", fmt.Sprintf("mv-%d", i+1))
	}

	// 3 hosts × 30 containers at once (make chaos starts 3 × 100 per scenario).
	const perHost, workers = 30, 4
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 3*workers)
	for hi, h := range c.Hosts {
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < perHost; i += workers {
					if out, err := h.Docker("run", "-d", "--name", fmt.Sprintf("s%d-%03d", hi+1, i), "--network", "mv", "tbox", "sleep", "3600"); err != nil {
						errs <- fmt.Errorf("host %d: %v: %s", hi+1, err, out)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d containers on 3 hosts in %s", 3*perHost, time.Since(began).Round(time.Second))
	owner := map[string]string{}
	rng := netip.MustParsePrefix(ipRange)
	for hi, h := range c.Hosts {
		var got []struct {
			Name            string
			NetworkSettings struct {
				Networks map[string]struct{ IPAddress string }
			}
		}
		ids := strings.Fields(h.MustDocker(t, "ps", "-q"))
		if len(ids) != perHost {
			t.Fatalf("host %d runs %d containers, want %d", hi+1, len(ids), perHost)
		}
		if err := json.Unmarshal([]byte(h.MustDocker(t, append([]string{"inspect"}, ids...)...)), &got); err != nil {
			t.Fatal(err)
		}
		for _, ctr := range got {
			ip := ctr.NetworkSettings.Networks["mv"].IPAddress
			where := fmt.Sprintf("host %d %s", hi+1, ctr.Name)
			if prev, dup := owner[ip]; dup {
				t.Fatalf("duplicate address %s: %s and %s", ip, prev, where)
			}
			a, err := netip.ParseAddr(ip)
			if err != nil || !rng.Contains(a) || ip == aux {
				t.Fatalf("%s has %q: outside --ip-range %s or the aux address", where, ip, ipRange)
			}
			owner[ip] = where
		}
	}
	stored := storeAddrs(t, c, subnet)
	for ip := range owner {
		if stored[ip] != "endpoint" {
			t.Fatalf("container address %s is %q in the store", ip, stored[ip])
		}
	}
	// The store holds exactly the containers, the gateway, the aux address
	// and host 1's shim.
	if len(stored) != len(owner)+3 || stored["10.70.0.1"] != "gateway" || stored[aux] != "aux" {
		t.Fatalf("store holds %d addresses for %d containers: %v", len(stored), len(owner), stored)
	}
	t.Logf("%d distinct addresses, in every daemon's inspect output and in the store", len(owner))

	for _, h := range c.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// In chunks: all removals at once overload a 2-core machine
			// (Docker 20.10 then kills shims it waited too long for).
			ids := strings.Fields(h.MustDocker(t, "ps", "-aq"))
			for len(ids) > 0 {
				n := min(10, len(ids))
				if out, err := h.Docker(append([]string{"rm", "-f"}, ids[:n]...)...); err != nil {
					t.Errorf("docker rm: %v\n%s", err, out)
				}
				ids = ids[n:]
			}
		}()
	}
	wg.Wait()
	testbed.Eventually(t, 90*time.Second, "every container address released", func() error {
		if left := storeAddrs(t, c, subnet); len(left) != 3 {
			// What each host still has of them: its containers, and
			// the endpoints its plugin holds.
			var still []string
			for _, h := range c.Hosts {
				ps, _ := h.Docker("ps", "-a", "--format", "{{.Names}} {{.Status}}")
				addrs, _, _ := h.TartanRC(t, "addresses", subnet)
				still = append(still, fmt.Sprintf("%s: containers [%s]; tartan addresses:\n%s", h.Name, ps, addrs))
			}
			return fmt.Errorf("store still holds %d addresses: %v\n%s", len(left), left, strings.Join(still, "\n"))
		}
		return nil
	})
	for _, h := range c.Hosts {
		removeNetworks(t, h, "mv")
	}
	if left := c.Consul.Keys(t, "tartan/addrs/"); len(left) != 0 {
		t.Fatalf("addresses left after the network's removal: %v", left)
	}
	for i, h := range c.Hosts {
		if l := h.MustIP(t, "-br", "link"); strings.Contains(l, "tm") || strings.Contains(l, "tp") {
			t.Fatalf("host %d keeps tartan links:\n%s", i+1, l)
		}
	}

	// Dual stack, as Docker's macvlan: containers on two hosts sit on the
	// segment with both families, their IPv6 default route through the
	// IPv6 --gateway, and reach each other over IPv6 directly.
	for _, h := range c.Hosts[:2] {
		h.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=macvlan", "-o", "parent=eth1", "--ipv6",
			"--subnet", "10.69.0.0/24", "--subnet", "fd00:69::/64", "--gateway", "fd00:69::fe", "mv6")
	}
	six := make([]string, 2)
	for i, h := range c.Hosts[:2] {
		name := fmt.Sprintf("mv6-%d", i+1)
		h.MustDocker(t, "run", "-d", "--name", name, "--network", "mv6", "tbox", "sleep", "600")
		six[i] = h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}/{{.GlobalIPv6PrefixLen}}{{end}}", name)
		if !strings.HasPrefix(six[i], "fd00:69::") || !strings.HasSuffix(six[i], "/64") {
			t.Fatalf("host %d's macvlan container has IPv6 address %q, want one of fd00:69::/64 with its prefix", i+1, six[i])
		}
		six[i] = strings.TrimSuffix(six[i], "/64")
		if r := h.MustDocker(t, "exec", name, "ip", "-6", "route", "show", "default"); !strings.Contains(r, "via fd00:69::fe dev eth0") {
			t.Fatalf("host %d: the container's IPv6 default route is %q, want via the gateway fd00:69::fe", i+1, r)
		}
	}
	testbed.Eventually(t, 20*time.Second, "macvlan containers on two hosts reach each other over IPv6", func() error {
		if out, err := c.Hosts[0].Docker("exec", "mv6-1", "ping", "-c", "1", "-W", "1", six[1]); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	for i, h := range c.Hosts[:2] {
		h.MustDocker(t, "rm", "-f", fmt.Sprintf("mv6-%d", i+1))
		removeNetworks(t, h, "mv6")
	}
}

// storeAddrs maps every address the store holds in subnet to its kind.
func storeAddrs(t *testing.T, c *testbed.Cluster, subnet string) map[string]string {
	t.Helper()
	prefix := "tartan/addrs/" + strings.ReplaceAll(subnet, "/", "-") + "/"
	out, err := c.Consul.CLI("kv", "export", prefix)
	if err != nil {
		t.Fatal(err)
	}
	var pairs []struct {
		Key   string
		Value []byte
	}
	if err := json.Unmarshal([]byte(out), &pairs); err != nil {
		t.Fatalf("consul kv export: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, p := range pairs {
		if kv.IsFolder(p.Key) {
			continue // the prefix's folder marker (kv.KeepFolder)
		}
		var a struct {
			IP   string `json:"ip"`
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(p.Value, &a); err != nil {
			t.Fatalf("%s: %v", p.Key, err)
		}
		m[strings.TrimPrefix(p.Key, prefix)] = a.Kind
	}
	return m
}

// macvlanBadInput: each a one-line error naming the problem, and nothing
// half-made (no Docker network, nothing in the store, no link).
func macvlanBadInput(t *testing.T, c *testbed.Cluster) {
	h := c.Hosts[1]
	before := strings.Join(c.Consul.Keys(t, "tartan/"), "\n")
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--subnet", "10.71.0.0/24"}, "no -o parent and this host has no default route"},
		{[]string{"-o", "parent=eth9", "--subnet", "10.71.0.0/24"}, "parent interface eth9 does not exist on this host"},
		{[]string{"-o", "parent=eth1", "--subnet", "10.71.0.0/24"}, "parent eth1 is already used by tartan macvlan network"},
		{[]string{"-o", "parent=eth1.100", "--subnet", "10.71.0.0/24"}, "this kernel has no 802.1q support"},
		{[]string{"-o", "parent=eth1", "-o", "macvlan_mode=l2", "--subnet", "10.71.0.0/24"}, "use bridge, private, vepa or passthru"},
		{[]string{"-o", "parent=eth1", "--subnet", "10.71.0.0/24", "--gateway", "10.72.0.1"}, "10.72.0.1"},
	} {
		args := append(append([]string{"network", "create", tnet, tipam, "-o", "tartan.backend=macvlan"}, bad.args...), "mvbad")
		out, err := h.Docker(args...)
		if err == nil || !strings.Contains(out, bad.want) || strings.Count(strings.TrimSpace(out), "\n") > 0 {
			t.Errorf("docker %s: %v\n%s\nwant one line with %q", strings.Join(bad.args, " "), err, out, bad.want)
		}
		t.Logf("%s → %s", strings.Join(bad.args, " "), strings.TrimSpace(out))
		if ls := h.MustDocker(t, "network", "ls", "--format", "{{.Name}}"); strings.Contains(ls, "mvbad") {
			_, _ = h.Docker("network", "rm", "mvbad")
			t.Errorf("%v left a Docker network", bad.args)
		}
	}
	if l := h.MustIP(t, "-br", "link"); strings.Contains(l, "eth1.100") {
		t.Errorf("a refused VLAN parent was left:\n%s", l)
	}
	after := c.Consul.Keys(t, "tartan/")
	sort.Strings(after)
	if got := strings.Join(after, "\n"); got != before && !onlyHostsChanged(before, got) {
		t.Errorf("refused networks changed the store:\nbefore\n%s\nafter\n%s", before, got)
	}
}

// onlyHostsChanged: host registrations, liveness renewals and identity
// claims change on their own.
func onlyHostsChanged(a, b string) bool {
	strip := func(s string) string {
		var out []string
		for _, l := range strings.Split(s, "\n") {
			if !hostOwnKey(l) {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	return strip(a) == strip(b)
}
