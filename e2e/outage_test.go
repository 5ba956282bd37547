//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
)

// Consul becomes unreachable (frozen): running containers keep their
// cross-host connectivity, new requests fail within seconds with an error
// that names the store, and when Consul is back everything resumes without a
// hand: a container started afterwards is reached from the other host.
func TestConsulOutage(t *testing.T) {
	testbed.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox")
	c := testbed.NewCluster(t, "out", 1500)
	for i := 0; i < 2; i++ {
		c.AddHost(t, "RESYNC=2s")
	}
	h1, h2 := c.Hosts[0], c.Hosts[1]
	for _, h := range c.Hosts {
		h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.68.0.0/16", "out")
	}
	run := func(h *testbed.Host, name string) string {
		h.MustDocker(t, "run", "-d", "--name", name, "--network", "out", "tbox", "sleep", "3600")
		return h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	}
	run(h1, "o1")
	ip2 := run(h2, "o2")
	reach := func(target string) error {
		out, err := h1.Docker("exec", "o1", "ping", "-c", "1", "-W", "1", target)
		if err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	}
	testbed.Eventually(t, 20*time.Second, "connected before the outage", func() error { return reach(ip2) })

	if err := c.Consul.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := h1.Docker("run", "--rm", "--network", "out", "tbox", "true")
	mustFail(t, out, err, "consul at http://"+testbed.ConsulAddr+":8500", "store unavailable")
	if took := time.Since(start); took > 20*time.Second {
		t.Fatalf("a request during the outage took %s to fail", took)
	}
	t.Logf("a docker run during the outage failed after %s: %v", time.Since(start).Round(time.Millisecond), strings.SplitN(err.Error(), "\n", 2)[0])
	// Several resync periods pass with the store gone: nothing is withdrawn.
	for i := 0; i < 5; i++ {
		if err := reach(ip2); err != nil {
			t.Fatalf("connectivity lost during the outage: %v", err)
		}
		time.Sleep(time.Second)
	}

	if err := c.Consul.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	var ip3 string
	testbed.Eventually(t, 30*time.Second, "docker run works again", func() error {
		_, _ = h2.Docker("rm", "-f", "o3")
		_, err := h2.Docker("run", "-d", "--name", "o3", "--network", "out", "tbox", "sleep", "3600")
		if err == nil {
			ip3 = h2.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "o3")
		}
		return err
	})
	testbed.Eventually(t, 20*time.Second, "the new container reached from the other host", func() error { return reach(ip3) })
}

// With three Consul servers, losing the one a plugin talks to (frozen, as a
// hung machine) costs nothing but a failover: new containers start and are
// reached across hosts, existing ones never lose connectivity.
func TestConsulServerLoss(t *testing.T) {
	testbed.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox")
	c := testbed.NewClusterHA(t, "ha", 1500)
	for i := 0; i < 2; i++ {
		c.AddHost(t, "RESYNC=2s")
	}
	h1, h2 := c.Hosts[0], c.Hosts[1]
	for _, h := range c.Hosts {
		h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.69.0.0/16", "ha")
	}
	run := func(h *testbed.Host, name string) string {
		h.MustDocker(t, "run", "-d", "--name", name, "--network", "ha", "tbox", "sleep", "3600")
		return h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	}
	run(h1, "a1")
	ip2 := run(h2, "a2")
	reach := func(target string) error {
		out, err := h1.Docker("exec", "a1", "ping", "-c", "1", "-W", "1", target)
		if err != nil {
			return fmt.Errorf("%v %s", err, out)
		}
		return nil
	}
	testbed.Eventually(t, 20*time.Second, "connected", func() error { return reach(ip2) })
	if err := c.Servers[0].Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer c.Servers[0].Signal(syscall.SIGCONT)
	// If the frozen server led the cluster, the other two elect a new leader
	// first; requests fail meanwhile (naming the store) and then succeed.
	start := time.Now()
	var ip3 string
	testbed.Eventually(t, 45*time.Second, "docker run with the first Consul server frozen", func() error {
		_, _ = h2.Docker("rm", "-f", "a3")
		if _, err := h2.Docker("run", "-d", "--name", "a3", "--network", "ha", "tbox", "sleep", "3600"); err != nil {
			return err
		}
		ip3 = h2.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "a3")
		return nil
	})
	t.Logf("first docker run that succeeded with the first Consul server frozen: %s after the freeze", time.Since(start).Round(time.Millisecond))
	testbed.Eventually(t, 30*time.Second, "new container reached across hosts without the first server", func() error { return reach(ip3) })
	if err := reach(ip2); err != nil {
		t.Fatalf("lost an existing container: %v", err)
	}
}
