//go:build e2e

package e2e

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// spanned is one tartan network created with the same subnet on every host
// of a cluster.
type spanned struct {
	t    *testing.T
	name string
}

func span(t *testing.T, c *testbed.Cluster, name, subnet string) *spanned {
	t.Helper()
	for _, h := range c.Hosts {
		h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", subnet, name)
	}
	return &spanned{t: t, name: name}
}

// run starts a container on h and returns its address.
func (s *spanned) run(h *testbed.Host, ctr string) (string, error) {
	_, _ = h.Docker("rm", "-f", ctr)
	if _, err := h.Docker("run", "-d", "--name", ctr, "--network", s.name, "tbox", "sleep", "3600"); err != nil {
		return "", err
	}
	return h.Docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", ctr)
}

// reach pings target from container ctr on h.
func (s *spanned) reach(h *testbed.Host, ctr, target string) error {
	out, err := h.Docker("exec", ctr, "ping", "-c", "1", "-W", "1", target)
	if err != nil {
		return fmt.Errorf("%v %s", err, out)
	}
	return nil
}

// startAcross runs a container on the first two hosts and waits until the
// first reaches the second; it returns the second's address.
func (s *spanned) startAcross(c *testbed.Cluster, a, b string) string {
	s.t.Helper()
	if _, err := s.run(c.Hosts[0], a); err != nil {
		s.t.Fatal(err)
	}
	ip, err := s.run(c.Hosts[1], b)
	if err != nil {
		s.t.Fatal(err)
	}
	testbed.Eventually(s.t, 20*time.Second, "connected across hosts", func() error { return s.reach(c.Hosts[0], a, ip) })
	return ip
}

// Consul becomes unreachable (frozen): running containers keep their
// cross-host connectivity, new requests fail (they do not hang) with an error
// that names the store, and when Consul is back everything resumes without a
// hand: a container started afterwards is reached from the other host.
func TestConsulOutage(t *testing.T) {
	t.Parallel() // mostly waiting: runs beside the other waiting tests
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox")
	c := testbed.NewCluster(t, "out", 1500)
	for i := 0; i < 2; i++ {
		c.AddHost(t, "RESYNC=2s", "METRICS=127.0.0.1:9323")
	}
	h1, h2 := c.Hosts[0], c.Hosts[1]
	n := span(t, c, "out", "10.68.0.0/16")
	ip2 := n.startAcross(c, "o1", "o2")
	// METRICS: the requests, the store calls, the resyncs, the peers.
	before := scrape(t, h1)
	for _, want := range []string{`tartan_requests_total{call="/NetworkDriver.CreateNetwork",code="200"}`, `tartan_request_seconds_bucket{call="/IpamDriver.RequestAddress"`,
		`tartan_store_requests_total{op="txn",result="ok"}`, `tartan_store_request_seconds_bucket{op="get"`, "tartan_resyncs_total{result=\"ok\"}",
		"tartan_lease_renewals_total", `tartan_network_peer_routes{backend="vxlan"`, `tartan_network_endpoints{backend="vxlan"`, `tartan_fastpath_packets_total{path="out"}`} {
		if !strings.Contains(before, want) {
			t.Fatalf("METRICS lacks %s:\n%s", want, before)
		}
	}
	if v := metric(t, before, `tartan_network_peer_routes{backend="vxlan"`); v != 1 {
		t.Fatalf("tartan_network_peer_routes = %v, want 1 (host 2's block)", v)
	}

	leakIP, err := n.run(h1, "leak1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Consul.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// A container removed during the outage: Docker's one release fails
	// (its address leaked for good); it is queued and lands
	// once the store is back.
	if out, err := h1.Docker("rm", "-f", "leak1"); err != nil {
		t.Fatalf("docker rm during the outage: %v %s", err, out)
	}
	start := time.Now()
	out, err := h1.Docker("run", "--rm", "--network", "out", "tbox", "true")
	mustFail(t, out, err, "consul at http://"+testbed.ConsulAddr+":8500", "store unavailable")
	t.Logf("a docker run during the outage failed after %s: %v", time.Since(start).Round(time.Millisecond), strings.SplitN(err.Error(), "\n", 2)[0])
	// Several resync periods pass with the store gone: nothing is withdrawn.
	for i := 0; i < 5; i++ {
		if err := n.reach(h1, "o1", ip2); err != nil {
			t.Fatalf("connectivity lost during the outage: %v", err)
		}
		time.Sleep(time.Second)
	}

	// The outage shows in the store error counter.
	if v := metricSum(t, scrape(t, h1), "tartan_store_requests_total{", `result="unavailable"`); v < 1 {
		t.Fatalf("tartan_store_requests_total{result=unavailable} = %v after an outage", v)
	}
	if err := c.Consul.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	var ip3 string
	testbed.Eventually(t, 30*time.Second, "docker run works again", func() (err error) {
		ip3, err = n.run(h2, "o3")
		return err
	})
	testbed.Eventually(t, 20*time.Second, "the new container reached from the other host", func() error { return n.reach(h1, "o1", ip3) })
	testbed.Eventually(t, 30*time.Second, "the release queued during the outage landed", func() error {
		if out, err := c.Consul.CLI("kv", "get", "tartan/addrs/10.68.0.0-16/"+leakIP); err == nil {
			return fmt.Errorf("%s still held: %s", leakIP, out)
		}
		return nil
	})
}

// With three Consul servers, losing the one a plugin talks to (frozen, as a
// hung machine) costs nothing but a failover: new containers start and are
// reached across hosts, existing ones never lose connectivity.
func TestConsulServerLoss(t *testing.T) {
	t.Parallel() // mostly waiting: runs beside the other waiting tests
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox")
	c := testbed.NewClusterHA(t, "ha", 1500)
	for i := 0; i < 2; i++ {
		c.AddHost(t, "RESYNC=2s")
	}
	h1, h2 := c.Hosts[0], c.Hosts[1]
	n := span(t, c, "ha", "10.69.0.0/16")
	ip2 := n.startAcross(c, "a1", "a2")
	if err := c.Servers[0].Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer c.Servers[0].Signal(syscall.SIGCONT)
	// If the frozen server led the cluster, the other two elect a new leader
	// first; requests fail meanwhile (naming the store) and then succeed.
	start := time.Now()
	var ip3 string
	testbed.Eventually(t, 45*time.Second, "docker run with the first Consul server frozen", func() (err error) {
		ip3, err = n.run(h2, "a3")
		return err
	})
	t.Logf("first docker run that succeeded with the first Consul server frozen: %s after the freeze", time.Since(start).Round(time.Millisecond))
	testbed.Eventually(t, 30*time.Second, "new container reached across hosts without the first server", func() error { return n.reach(h1, "a1", ip3) })
	if err := n.reach(h1, "a1", ip2); err != nil {
		t.Fatalf("lost an existing container: %v", err)
	}
}

// scrape reads a host's plugin metrics (METRICS=127.0.0.1:9323) from inside
// its namespace.
func scrape(t *testing.T, h *testbed.Host) string {
	t.Helper()
	var out string
	testbed.Eventually(t, 10*time.Second, "the plugin serves /metrics on 127.0.0.1:9323", func() (err error) {
		out, err = h.Exec("curl", "-sf", "-m", "5", "http://127.0.0.1:9323/metrics")
		return err
	})
	return out
}

// metric is the value of the first series whose line starts with prefix.
func metric(t *testing.T, scraped, prefix string) float64 {
	t.Helper()
	for _, l := range strings.Split(scraped, "\n") {
		if strings.HasPrefix(l, prefix) {
			f := strings.Fields(l)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", l, err)
			}
			return v
		}
	}
	t.Fatalf("no series %s in:\n%s", prefix, scraped)
	return 0
}

// metricSum adds up the series whose lines start with prefix and hold
// label.
func metricSum(t *testing.T, scraped, prefix, label string) float64 {
	t.Helper()
	var sum float64
	for _, l := range strings.Split(scraped, "\n") {
		if strings.HasPrefix(l, prefix) && strings.Contains(l, label) {
			sum += metric(t, l, l[:strings.Index(l, "}")+1])
		}
	}
	return sum
}
