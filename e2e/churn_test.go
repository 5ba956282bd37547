//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// Hosts come and go: a fourth host is reachable from the others once its
// container started; state deleted by hand (the VXLAN device, a route) comes
// back with the periodic resync; a host that stops renewing disappears from
// every other host once its lease runs out. How fast each comes is make
// bench's business (its control-plane rows), not this test's.
func TestMultiHostChurn(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "curl", "busybox")
	c := testbed.NewCluster(t, "ch", 1500)
	settings := []string{"LEASE_TTL=12s", "RESYNC=3s"}
	for i := 0; i < 3; i++ {
		c.AddHost(t, settings...)
	}
	const subnet = "10.64.0.0/16"
	ip := make([]string, 4)
	join := func(i int) {
		h := c.Hosts[i]
		h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", subnet, "ch")
		h.MustDocker(t, "run", "-d", "--name", fmt.Sprintf("ch-%d", i+1), "--network", "ch", "tbox", "sleep", "3600")
		ip[i] = h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", fmt.Sprintf("ch-%d", i+1))
	}
	ping := func(from, to int) error {
		out, err := c.Hosts[from].Docker("exec", fmt.Sprintf("ch-%d", from+1), "ping", "-c", "1", "-W", "1", ip[to])
		if err != nil {
			return fmt.Errorf("host %d -> host %d (%s): %v %s", from+1, to+1, ip[to], err, out)
		}
		return nil
	}
	for i := 0; i < 3; i++ {
		join(i)
	}
	testbed.Eventually(t, 20*time.Second, "three hosts connected", func() error { return ping(0, 2) })

	// A fourth host.
	c.AddHost(t, settings...)
	start := time.Now()
	join(3)
	testbed.Eventually(t, testbed.MinWait, "the new host reached from host 1", func() error { return ping(0, 3) })
	t.Logf("fourth host reachable from host 1 %s after its container started", time.Since(start).Round(time.Millisecond))
	for i := 1; i < 3; i++ {
		if err := ping(i, 3); err != nil {
			t.Fatal(err)
		}
	}

	// The periodic resync (RESYNC=3s) repairs, with nothing restarted.
	h1 := c.Hosts[0]
	dev := strings.Fields(h1.MustIP(t, "-o", "link", "show", "type", "vxlan"))[1]
	dev = strings.TrimSuffix(strings.SplitN(dev, "@", 2)[0], ":")
	h1.MustIP(t, "link", "del", dev)
	testbed.Eventually(t, 10*time.Second, "VXLAN device "+dev+" and its peers repaired", func() error { return ping(0, 1) })
	block2 := ""
	for _, l := range strings.Split(h1.MustIP(t, "route", "show", "proto", "84"), "\n") {
		if strings.Contains(l, " via "+c.Addr[1]) {
			block2 = strings.Fields(l)[0]
		}
	}
	if block2 == "" {
		t.Fatal("no route to host 2's block on host 1")
	}
	h1.MustIP(t, "route", "del", block2)
	testbed.Eventually(t, 10*time.Second, "route to "+block2+" repaired", func() error {
		if !strings.Contains(h1.MustIP(t, "route", "show", "proto", "84"), block2+" via "+c.Addr[1]) {
			return fmt.Errorf("no route to %s yet", block2)
		}
		return ping(0, 1)
	})

	// Host 4 stops renewing (its plugin is disabled): once its lease
	// lapses, every other host drops its routes, FDB and neighbour entries.
	h4 := hostStatus(t, c.Hosts[3]).Host
	c.Hosts[3].MustDocker(t, "plugin", "disable", "-f", testbed.PluginName)
	testbed.Eventually(t, 40*time.Second, "host 4 gone from hosts 1-3", func() error {
		for i := 0; i < 3; i++ {
			h := c.Hosts[i]
			if r := h.MustIP(t, "route", "show", "proto", "84"); strings.Contains(r, "via "+c.Addr[3]) {
				return fmt.Errorf("host %d still routes to host 4:\n%s", i+1, r)
			}
			if n := h.MustIP(t, "neigh", "show"); strings.Contains(n, c.Addr[3]+" dev tartan.") {
				return fmt.Errorf("host %d still has host 4's neighbour entry", i+1)
			}
		}
		return nil
	})
	if err := ping(1, 2); err != nil {
		t.Fatalf("the remaining hosts lost each other: %v", err)
	}
	// tartan doctor on host 1 names the lapsed host and the block it still
	// holds; tartan gc, once host 1 has not seen it renew for two lease
	// lifetimes, would remove it, and gc --yes does.
	testbed.Eventually(t, testbed.MinWait, "tartan doctor names lapsed host 4", func() error {
		out, rc, _ := h1.TartanRC(t, "doctor")
		if rc != 1 || !strings.Contains(out, "host "+h4+" ("+c.Addr[3]+") lapsed") || !strings.Contains(out, "still holds blocks 10.64.") {
			return fmt.Errorf("exit %d:\n%s", rc, out)
		}
		return nil
	})
	testbed.Eventually(t, testbed.MinWait, "tartan gc would remove host 4", func() error {
		if plan := h1.Tartan(t, "gc"); !strings.Contains(plan, "would remove gone host "+h4+" ("+c.Addr[3]) {
			return fmt.Errorf("tartan gc:\n%s", plan)
		}
		return nil
	})
	// Every host collects gone hosts on its own too (every minute): one
	// of them may have done it first. A block this host saw renewed less
	// than a lease lifetime ago stays, with its host's record, for the
	// next pass.
	held := func() []string {
		var left []string
		for _, k := range c.Consul.Keys(t, "tartan/") {
			if k == "tartan/hosts/"+h4 || (strings.HasPrefix(k, "tartan/blocks/") || strings.HasPrefix(k, "tartan/addrs/")) && hasHost(c, k, h4) {
				left = append(left, k)
			}
		}
		return left
	}
	testbed.Eventually(t, testbed.MinWait, "tartan gc --yes removes host 4, its block and its address", func() error {
		if plan := h1.Tartan(t, "gc"); strings.Contains(plan, "would remove gone host "+h4) {
			t.Logf("tartan gc --yes: %s", h1.Tartan(t, "gc", "--yes"))
		}
		if left := held(); len(left) > 0 {
			return fmt.Errorf("still in the store: %v", left)
		}
		return nil
	})
	if out := h1.Tartan(t, "hosts"); strings.Contains(out, h4) {
		t.Fatalf("host 4 still listed after tartan gc --yes:\n%s", out)
	}
}

// hasHost says whether the store's key (read now: it may be gone) names
// host.
func hasHost(c *testbed.Cluster, key, host string) bool {
	v, err := c.Consul.CLI("kv", "get", key)
	return err == nil && strings.Contains(v, `"host":"`+host+`"`)
}
