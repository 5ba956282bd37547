//go:build e2e

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// TestDualStack: --ipv6 networks on three hosts with Consul. On a vxlan
// and a host-gw network every container reaches every other over IPv4 and
// IPv6 (ping and TCP), its IPv6 address comes from its host's IPv6 block,
// and each host routes the other hosts' IPv6 blocks (through their VTEP's
// link-local address on vxlan, their underlay's on host-gw). IPv6 is
// isolated as IPv4 is: another tartan network's IPv6 addresses are out of
// reach, and an --internal network's containers reach nothing outside it
// over IPv6. Bad IPv6 input is refused by name.
func TestDualStack(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "bridge", "curl", "busybox")
	c := testbed.NewCluster(t, "d", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t)
	}
	type dsNet struct{ name, v4, v6 string }
	nets := []dsNet{
		{"dvx", "10.71.0.0/16", "fd00:71::/64"},
		{"dgw", "10.72.0.0/16", "fd00:72::/64"},
	}
	backendOf := map[string]string{"dvx": "vxlan", "dgw": "host-gw"}
	for _, n := range nets {
		for _, h := range c.Hosts {
			h.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend="+backendOf[n.name], "--ipv6", "--subnet", n.v4, "--subnet", n.v6, n.name)
		}
	}
	type addrs struct{ v4, v6 string }
	ips := map[string][]addrs{}
	for _, n := range nets {
		for i, h := range c.Hosts {
			name := fmt.Sprintf("%s-%d", n.name, i+1)
			h.MustDocker(t, "run", "-d", "--name", name, "--network", n.name, "tbox", "sh", "-c",
				"mkdir -p /www && echo hello-"+name+" > /www/i && httpd -f -p 8080 -h /www")
			got := strings.Fields(h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}", name))
			if len(got) != 2 {
				t.Fatalf("%s has no IPv6 address: %v", name, got)
			}
			a6 := netip.MustParseAddr(got[1])
			if !netip.MustParsePrefix(n.v6).Contains(a6) {
				t.Fatalf("%s got IPv6 address %s, outside %s", name, a6, n.v6)
			}
			ips[n.name] = append(ips[n.name], addrs{got[0], got[1]})
		}
	}
	t.Logf("addresses: %v", ips)
	// Each host's containers take their IPv6 addresses from its own block
	// (/112 by default): three hosts, three blocks.
	for _, n := range nets {
		blocks := map[netip.Prefix]bool{}
		for _, a := range ips[n.name] {
			b, _ := netip.MustParseAddr(a.v6).Prefix(112)
			blocks[b] = true
		}
		if len(blocks) != 3 {
			t.Fatalf("%s: the three hosts' containers share IPv6 blocks: %v", n.name, ips[n.name])
		}
	}
	for _, n := range nets {
		for i, h := range c.Hosts {
			for j := range c.Hosts {
				if i == j {
					continue
				}
				src, dst := fmt.Sprintf("%s-%d", n.name, i+1), ips[n.name][j]
				for _, target := range []string{dst.v4, dst.v6} {
					testbed.Eventually(t, 20*time.Second, fmt.Sprintf("%s: host %d reaches host %d's container at %s (ping and TCP)", n.name, i+1, j+1, target), func() error {
						if out, err := h.Docker("exec", src, "ping", "-c", "1", "-W", "1", target); err != nil {
							return fmt.Errorf("ping: %v: %s", err, out)
						}
						url := "http://" + target + ":8080/i"
						if strings.Contains(target, ":") {
							url = "http://[" + target + "]:8080/i"
						}
						out, err := h.Docker("exec", src, "wget", "-q", "-O", "-", url)
						if want := fmt.Sprintf("hello-%s-%d", n.name, j+1); err != nil || strings.TrimSpace(out) != want {
							return fmt.Errorf("wget %s: %q %v, want %q", url, out, err, want)
						}
						return nil
					})
				}
			}
		}
	}
	// Host 1 routes the two other hosts' IPv6 blocks of each network:
	// through their VTEPs' link-local addresses on the VXLAN device, and
	// through their underlay link-local addresses on host-gw.
	r6 := c.Hosts[0].MustIP(t, "-6", "route", "show", "proto", "84")
	for _, n := range nets {
		peers := 0
		for _, l := range strings.Split(r6, "\n") {
			if strings.HasPrefix(l, strings.TrimSuffix(n.v6, ":/64")) && strings.Contains(l, "/112 via fe80::") {
				peers++
			}
		}
		if peers != 2 {
			t.Fatalf("host 1 has %d IPv6 peer routes for %s, want 2:\n%s", peers, n.name, r6)
		}
	}
	t.Logf("host 1's IPv6 routes:\n%s", r6)
	// tartan doctor is clean on every host (kernel IPv6 entries, ip6tables,
	// Docker's view of the dual-stack endpoints), and a plugin restart on
	// host 1 keeps its IPv6 routes and rules: its containers are reached
	// over IPv6 from host 2 after it, and doctor is clean again.
	doctorClean := func(when string) {
		t.Helper()
		for i, h := range c.Hosts {
			testbed.Eventually(t, 30*time.Second, fmt.Sprintf("tartan doctor clean on host %d %s", i+1, when), func() error {
				if out, rc, errs := h.TartanRC(t, "doctor"); rc != 0 {
					return fmt.Errorf("exit %d:\n%s%s", rc, out, errs)
				}
				return nil
			})
		}
	}
	doctorClean("with dual-stack networks")
	c.Hosts[0].MustDocker(t, "plugin", "disable", "-f", testbed.PluginName)
	c.Hosts[0].MustDocker(t, "plugin", "enable", testbed.PluginName)
	c.Hosts[0].WaitPlugin(t)
	for _, n := range nets {
		target := ips[n.name][0].v6
		testbed.Eventually(t, 20*time.Second, fmt.Sprintf("%s: host 2 reaches host 1's container at %s after host 1's plugin restarted", n.name, target), func() error {
			if out, err := c.Hosts[1].Docker("exec", n.name+"-2", "ping", "-c", "1", "-W", "1", target); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	}
	doctorClean("after host 1's plugin restarted")

	// Isolation: a container of dvx does not reach dgw's IPv6 addresses,
	// on its own host or another.
	for _, target := range []string{ips["dgw"][0].v6, ips["dgw"][1].v6} {
		if out, err := c.Hosts[0].Docker("exec", "dvx-1", "ping", "-c", "1", "-W", "1", target); err == nil {
			t.Fatalf("dvx-1 reaches dgw's %s over IPv6 across networks:\n%s", target, out)
		}
	}
	// --internal: the containers reach each other over IPv6, nothing
	// outside the network (another network's IPv6 addresses, the host).
	for _, h := range c.Hosts[:2] {
		h.MustDocker(t, "network", "create", tnet, tipam, "--internal", "--ipv6", "--subnet", "10.73.0.0/16", "--subnet", "fd00:73::/64", "dint")
	}
	for i, h := range c.Hosts[:2] {
		h.MustDocker(t, "run", "-d", "--name", fmt.Sprintf("dint-%d", i+1), "--network", "dint", "tbox", "sleep", "600")
	}
	int2 := strings.TrimSpace(c.Hosts[1].MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.GlobalIPv6Address}}{{end}}", "dint-2"))
	testbed.Eventually(t, 20*time.Second, "internal containers reach each other over IPv6", func() error {
		out, err := c.Hosts[0].Docker("exec", "dint-1", "ping", "-c", "1", "-W", "1", int2)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	for _, target := range []string{ips["dvx"][0].v6, ips["dvx"][1].v6} {
		if out, err := c.Hosts[0].Docker("exec", "dint-1", "ping", "-c", "1", "-W", "1", target); err == nil {
			t.Fatalf("an --internal container reaches %s over IPv6:\n%s", target, out)
		}
	}
	// NAT66: off by default (dvx's IPv6 pool is not masqueraded), on with
	// -o tartan.nat66=true. With it, a container reaches an IPv6 address
	// outside the cluster's pools as its host's address: host 2's underlay
	// address, and host 2 has no route to dnat's pool (dnat is host 1's
	// only), so only a masqueraded ping is answered.
	c.Hosts[0].MustIP(t, "-6", "addr", "add", "fd00:98::11/64", "dev", "eth1", "nodad")
	c.Hosts[1].MustIP(t, "-6", "addr", "add", "fd00:98::12/64", "dev", "eth1", "nodad")
	c.Hosts[0].MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.nat66=true", "--ipv6", "--subnet", "10.77.0.0/16", "--subnet", "fd00:77::/64", "dnat")
	c.Hosts[0].MustDocker(t, "run", "-d", "--name", "dnat-1", "--network", "dnat", "tbox", "sleep", "600")
	nat, err := c.Hosts[0].Exec(testbed.Iptables6(), "-t", "nat", "-S", "TARTAN-POSTROUTING")
	if err != nil || !strings.Contains(nat, "-s fd00:77::/64 ! -d fd00:77::/64 -j MASQUERADE") || strings.Contains(nat, "fd00:71::") {
		t.Fatalf("NAT66 rules (%v):\n%s", err, nat)
	}
	testbed.Eventually(t, 20*time.Second, "a NAT66 container reaches host 2's IPv6 underlay address", func() error {
		if out, err := c.Hosts[0].Docker("exec", "dnat-1", "ping", "-c", "1", "-W", "1", "fd00:98::12"); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	// The host's firewall holds tartan's IPv6 chains, in Docker's flavour.
	if out, err := c.Hosts[0].Exec(testbed.Iptables6() + "-save"); err != nil || !strings.Contains(out, ":TARTAN-ISOLATE") || !strings.Contains(out, "fd00:73::/64") {
		t.Fatalf("tartan's IPv6 rules are missing (%v):\n%s", err, out)
	}

	// Bad IPv6 input is refused by name, and leaves nothing behind.
	h := c.Hosts[0]
	for _, bad := range []struct {
		args []string
		want string
	}{
		{[]string{"--ipv6", "--subnet", "10.74.0.0/16"}, "IPv6 --subnet"},
		{[]string{"--ipv6", "--subnet", "10.74.0.0/16", "--subnet", "fe80::/64"}, "link-local"},
		{[]string{"--ipv6", "--subnet", "10.74.0.0/16", "--subnet", "fd00:74::/64", "--ipam-opt", "tartan.blocksize6=40"}, "tartan.blocksize6=40 does not fit"},
		{[]string{"--ipv6", "--subnet", "10.75.0.0/16", "--subnet", "fd00:71::/64"}, "fd00:71::/64"},
		// A refused duplicate of a live dual-stack network (Docker then
		// releases both its pools): the live network keeps both.
		{[]string{"--ipv6", "--subnet", "10.71.0.0/16", "--subnet", "fd00:71::/64"}, "already used by tartan network"},
		{[]string{"--ipv6", "--subnet", "10.76.0.0/16", "--subnet", "fd00:76::/64", "-o", "tartan.backend=macvlan", "-o", "tartan.nat66=true"}, "tartan.nat66 is for routed networks"},
	} {
		out, err := h.Docker(append([]string{"network", "create", tnet, tipam}, append(bad.args, "dbad")...)...)
		mustFail(t, out, err, bad.want)
	}
	if out, _ := h.Docker("network", "ls", "-q", "--filter", "name=dbad"); strings.TrimSpace(out) != "" {
		t.Fatalf("a refused network was left: %s", out)
	}
	for _, key := range []string{"tartan/pools/10.71.0.0-16", "tartan/pools/fd00:71::-64"} {
		if keys := c.Consul.Keys(t, key); len(keys) == 0 {
			t.Fatalf("the refused duplicate took the live network's pool record %s", key)
		}
	}
	testbed.Eventually(t, time.Minute, "dvx keeps IPv6 after a refused duplicate create", func() error {
		if out, err := h.Docker("exec", "dvx-1", "ping", "-c", "1", "-W", "2", ips["dvx"][1].v6); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	testbed.Eventually(t, time.Minute, "a new container on dvx gets an IPv6 address and reaches host 2's container after a refused duplicate create", func() error {
		if out, err := h.Docker("run", "--rm", "--network", "dvx", "tbox", "ping", "-c", "1", "-W", "2", ips["dvx"][1].v6); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	for i, h := range c.Hosts {
		_, _ = h.Docker("rm", "-f", fmt.Sprintf("dvx-%d", i+1), fmt.Sprintf("dgw-%d", i+1), fmt.Sprintf("dint-%d", i+1), fmt.Sprintf("dnat-%d", i+1))
	}
}
