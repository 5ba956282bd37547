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

// A network created once with -o tartan.cluster=true appears on the other
// hosts with the same name, options and subnet (made by each host's plugin
// through its Docker API) and is usable there, and its removal where
// it was made removes it everywhere once no host has endpoints on it.
func TestClusterNetworks(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "curl", "busybox")
	c := testbed.NewCluster(t, "cw", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t, "LOG_LEVEL=debug")
	}
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]
	exists := func(h *testbed.Host, name string) bool {
		out, _ := h.Docker("network", "ls", "-q", "-f", "name=^"+name+"$")
		return strings.TrimSpace(out) != ""
	}
	start := time.Now()
	h1.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.cluster=true", "-o", "tartan.backend=host-gw",
		"--subnet", "10.85.0.0/16", "--ip-range", "10.85.128.0/17", "--label", "team=web", "cw")
	created := time.Since(start)
	for i, h := range []*testbed.Host{h2, h3} {
		testbed.Eventually(t, testbed.MinWait, fmt.Sprintf("the network on host %d", i+2), func() error {
			if !exists(h, "cw") {
				return fmt.Errorf("docker network ls there does not list cw")
			}
			return nil
		})
	}
	// How fast it spreads is make bench's figure (cluster network row).
	t.Logf("docker network create took %v on host 1; the network was on hosts 2 and 3 after %v", created, time.Since(start))
	for i, h := range []*testbed.Host{h2, h3} {
		got := h.MustDocker(t, "network", "inspect", "-f", "{{.Driver}} {{(index .IPAM.Config 0).Subnet}} {{(index .IPAM.Config 0).IPRange}} {{index .Options \"tartan.backend\"}} {{index .Labels \"team\"}}", "cw")
		if got != testbed.PluginName+" 10.85.0.0/16 10.85.128.0/17 host-gw web" {
			t.Fatalf("host %d's copy: %q", i+2, got)
		}
	}
	ips := map[string]string{}
	for i, h := range c.Hosts {
		name := fmt.Sprintf("cw-%d", i+1)
		h.MustDocker(t, "run", "-d", "--name", name, "--network", "cw", "tbox", "sleep", "3600")
		ips[name] = h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	}
	for i, h := range c.Hosts {
		for j := range c.Hosts {
			if i == j {
				continue
			}
			target := ips[fmt.Sprintf("cw-%d", j+1)]
			testbed.Eventually(t, 10*time.Second, fmt.Sprintf("host %d reaches host %d's container %s", i+1, j+1, target), func() error {
				out, err := h.Docker("exec", fmt.Sprintf("cw-%d", i+1), "ping", "-c", "1", "-W", "1", target)
				if err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
		}
	}
	// The origin's plugin restarted (disable, enable: how settings change
	// and upgrades go) does not withdraw the network (the first
	// pass ran before Docker listed the plugin as enabled and withdrew every
	// network the host had made; other hosts then dropped their copies).
	createIndex := func() string { // the record's Consul CreateIndex: withdrawn and published again changes it
		t.Helper()
		out, err := c.Consul.CLI("kv", "get", "-detailed", "tartan/clusternets/cw")
		if err != nil {
			t.Fatalf("the cluster record is gone: %v %s", err, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "CreateIndex" {
				return f[1]
			}
		}
		t.Fatalf("no CreateIndex in %s", out)
		return ""
	}
	before := createIndex()
	h1.MustDocker(t, "plugin", "disable", "-f", testbed.PluginName)
	h1.MustDocker(t, "plugin", "enable", testbed.PluginName)
	h1.WaitPlugin(t)
	time.Sleep(5 * time.Second) // several replicator passes
	if after := createIndex(); after != before {
		t.Fatalf("the cluster record was withdrawn and published again when host 1's plugin was enabled (CreateIndex %s, then %s)", before, after)
	}

	// A copy removed by hand on host 3 comes back (the network is the
	// cluster's; remove it where it was made).
	h3.MustDocker(t, "rm", "-f", "cw-3")
	removeNetworks(t, h3, "cw")
	testbed.Eventually(t, 10*time.Second, "host 3's copy back", func() error {
		if !exists(h3, "cw") {
			return fmt.Errorf("not yet")
		}
		return nil
	})

	// Removal where it was made: host 3 (no endpoints) drops it at once,
	// host 2 once its container is gone.
	h1.MustDocker(t, "rm", "-f", "cw-1")
	removeNetworks(t, h1, "cw")
	start = time.Now()
	testbed.Eventually(t, 10*time.Second, "host 3's copy removed", func() error {
		if exists(h3, "cw") {
			return fmt.Errorf("still there")
		}
		return nil
	})
	t.Logf("removal reached host 3 after %v", time.Since(start))
	time.Sleep(2 * time.Second)
	if !exists(h2, "cw") {
		t.Fatal("host 2's copy was removed while a container used it")
	}
	if out, err := h2.Docker("exec", "cw-2", "ping", "-c", "1", "-W", "1", "10.85.0.1"); err != nil && strings.Contains(out, "No such container") {
		t.Fatalf("host 2's container is gone: %s", out)
	}
	h2.MustDocker(t, "rm", "-f", "cw-2")
	testbed.Eventually(t, 45*time.Second, "host 2's copy removed after its last container", func() error {
		if exists(h2, "cw") {
			return fmt.Errorf("still there")
		}
		return nil
	})
	testbed.Eventually(t, 10*time.Second, "nothing of the network left in the store", func() error {
		for _, k := range c.Consul.Keys(t, "tartan/") {
			if !hostOwnKey(k) && k != "tartan/pools.guard" {
				return fmt.Errorf("left: %s", k)
			}
		}
		return nil
	})
}
