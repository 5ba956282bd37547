//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// onAll runs one docker command per host at the same moment and returns
// each host's output and error.
func onAll(c *testbed.Cluster, args func(i int) []string) ([]string, []error) {
	outs, errs := make([]string, len(c.Hosts)), make([]error, len(c.Hosts))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, h := range c.Hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			outs[i], errs[i] = h.Docker(args(i)...)
		}()
	}
	close(start)
	wg.Wait()
	return outs, errs
}

// Networks created on several hosts at once stay what each host asked for
// (issue 9). Each part failed before its fix:
//   - M10: with -o tartan.vni=N on every host at once, a host that lost the
//     race for the network record deleted vnis/N, freeing the winner's VNI;
//   - M15: networks without --subnet created at once on two hosts picked the
//     same automatic pool and merged into one network;
//   - M14: the same subnet --internal on one host and not on another was
//     accepted: internal on one host, with egress on the other;
//   - M2: see recreateWhileReleased.
func TestConcurrentCreates(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "curl", "busybox")
	c := testbed.NewCluster(t, "cc", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t)
	}
	_, errs := onAll(c, func(int) []string {
		return []string{"network", "create", tnet, tipam, "-o", "tartan.vni=4242", "--subnet", "10.72.0.0/16", "v"}
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("host %d: %v", i+1, err)
		}
	}
	if v, err := c.Consul.CLI("kv", "get", "tartan/vnis/4242"); err != nil || strings.TrimSpace(v) != "10.72.0.0/16" {
		t.Fatalf("the VNI claim after three concurrent creates: %q %v", v, err)
	}
	for i, h := range c.Hosts {
		if out := h.MustIP(t, "-d", "link", "show", "tartan.4242"); !strings.Contains(out, "vxlan id 4242") {
			t.Fatalf("host %d: %s", i+1, out)
		}
	}

	_, errs = onAll(c, func(i int) []string {
		return []string{"network", "create", tnet, tipam, fmt.Sprintf("auto%d", i)}
	})
	subnets := map[string]int{}
	for i, h := range c.Hosts {
		if errs[i] != nil {
			t.Fatalf("host %d: %v", i+1, errs[i])
		}
		sub := h.MustDocker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", fmt.Sprintf("auto%d", i))
		if j, dup := subnets[sub]; dup || sub == "" {
			t.Fatalf("hosts %d and %d got the same automatic subnet %q: two networks merged", j+1, i+1, sub)
		}
		subnets[sub] = i
	}

	c.Hosts[0].MustDocker(t, "network", "create", tnet, tipam, "--internal", "--subnet", "10.73.0.0/16", "in")
	out, err := c.Hosts[1].Docker("network", "create", tnet, tipam, "--subnet", "10.73.0.0/16", "in")
	mustFail(t, out, err, "10.73.0.0/16", "--internal")
	out, err = c.Hosts[1].Docker("network", "create", tnet, tipam, "--internal", "-o", "com.docker.network.driver.mtu=1400", "--subnet", "10.73.0.0/16", "in")
	mustFail(t, out, err, "10.73.0.0/16", "mtu")
	c.Hosts[1].MustDocker(t, "network", "create", tnet, tipam, "--internal", "--subnet", "10.73.0.0/16", "in")

	recreateWhileReleased(t, c)

	for i, h := range c.Hosts {
		names := []string{"v", fmt.Sprintf("auto%d", i)}
		if i < 2 {
			names = append(names, "in")
		}
		removeNetworks(t, h, names...)
	}
	testbed.Eventually(t, 15*time.Second, "nothing of the networks left in the store", func() error {
		var left []string
		for _, k := range c.Consul.Keys(t, "tartan/") {
			if strings.Contains(k, "/pools/") || strings.Contains(k, "/networks/") || strings.Contains(k, "/vnis/") || strings.Contains(k, "/addrs/") || strings.Contains(k, "/blocks/") {
				left = append(left, k)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("left: %v", left)
		}
		return nil
	})
}

// recreateWhileReleased: the last host holding a subnet removes
// its network while another host creates the subnet, both at once, six
// rounds with the roles swapped. The last holder used to delete the pool
// record and then, with no compare-and-set, everything under it: a create
// that registered the subnet in between lost its network record, its VNI
// claim and its gateway record (a live network without records, whose VNI
// the next network could take; the next host to join claimed another VNI:
// a split network). After each round the creator's network must have its
// pool, network, VNI and gateway records, and a container started on it its
// address record. The race window is narrow: the rounds make a regression
// likely to show, not certain (the unit test ipam/ownership_test.go pins
// the order of the removal deterministically).
func recreateWhileReleased(t *testing.T, c *testbed.Cluster) {
	t.Helper()
	const subnet, key = "10.75.0.0/16", "10.75.0.0-16"
	// The gateway named, so that every engine reserves it (Docker 28 and
	// later reserve none for a routed network otherwise).
	create := []string{"network", "create", tnet, tipam, "--subnet", subnet, "--gateway", "10.75.0.1", "re"}
	c.Hosts[0].MustDocker(t, create...)
	for round := 0; round < 6; round++ {
		from, to := c.Hosts[round%2], c.Hosts[1-round%2]
		var wg sync.WaitGroup
		var rmOut, createOut string
		var rmErr, createErr error
		wg.Add(2)
		go func() { defer wg.Done(); rmOut, rmErr = from.Docker("network", "rm", "re") }()
		go func() { defer wg.Done(); createOut, createErr = to.Docker(create...) }()
		wg.Wait()
		if rmErr != nil || createErr != nil {
			t.Fatalf("round %d: rm on %s: %v %s; create on %s: %v %s", round, from.Name, rmErr, rmOut, to.Name, createErr, createOut)
		}
		testbed.Eventually(t, 10*time.Second, fmt.Sprintf("round %d: the records of %s's network", round, to.Name), func() error {
			var n struct {
				Pool string
				VNI  int
			}
			raw, err := c.Consul.CLI("kv", "get", "tartan/networks/"+key)
			if err != nil || json.Unmarshal([]byte(raw), &n) != nil || n.VNI == 0 {
				return fmt.Errorf("network record: %q %v", raw, err)
			}
			if v, err := c.Consul.CLI("kv", "get", fmt.Sprintf("tartan/vnis/%d", n.VNI)); err != nil || strings.TrimSpace(v) != subnet {
				return fmt.Errorf("VNI %d claim: %q %v", n.VNI, v, err)
			}
			for _, k := range []string{"tartan/pools/" + key, "tartan/addrs/" + key + "/10.75.0.1"} {
				if _, err := c.Consul.CLI("kv", "get", k); err != nil {
					return fmt.Errorf("%s: %v", k, err)
				}
			}
			return nil
		})
		to.MustDocker(t, "run", "-d", "--name", "re1", "--network", "re", "tbox", "sleep", "3600")
		ip := to.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "re1")
		if _, err := c.Consul.CLI("kv", "get", "tartan/addrs/"+key+"/"+ip); err != nil {
			t.Fatalf("round %d: the container's address %s has no record: %v", round, ip, err)
		}
		to.MustDocker(t, "rm", "-f", "re1")
	}
	removeNetworks(t, c.Hosts[0], "re") // six rounds: host 1 created last
}
