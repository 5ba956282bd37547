//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// A UDP flow to a published port outlives the container it reached (issue
// 24): a client on the LAN keeps sending to the host's port 9100 from one
// source port (a syslog or DNS forwarder, a game client) while the
// container publishing it is removed and another takes the port, with
// another address. The kernel's connection tracking entry made for the
// first container would DNAT the flow to its old address for as long as
// the flow goes on (each datagram renews it); the plugin flushes the
// port's entries when the port is withdrawn, and the flow reaches the new
// container. Docker's own bridge driver does the same for its ports.
func TestUDPFlowFollowsPublishedPort(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox", "go")
	raw := buildStatic(t, "rawframe")
	listener := buildStatic(t, "stream") // busybox's nc has no UDP
	c := testbed.NewCluster(t, "uf", 1500)
	h := c.AddHost(t)
	lan := c.AddRouter(t, "lan", "198.51.100.9/32")
	h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.42.0.0/16", "uflow")
	start := func(name, ip string) {
		t.Helper()
		h.MustDocker(t, "run", "-d", "--name", name, "--network", "uflow", "--ip", ip, "-p", "9100:9000/udp", "tbox", "sleep", "36000")
		h.MustDocker(t, "cp", listener, name+":/stream")
		h.MustDocker(t, "exec", "-d", name, "sh", "-c", "/stream -u :9000 > /udp.log 2>&1")
	}
	got := func(name string) string {
		out, _ := h.Docker("exec", name, "cat", "/udp.log")
		return out
	}
	mac := strings.Fields(h.MustIP(t, "-br", "link", "show", "eth1"))[2]
	hostIP := testbed.UnderlayPrefix + "11" // the first host's underlay address

	// The flow: one datagram every 200 ms, always from 10.98.0.200:40000
	// (the LAN machine's underlay address and rawframe's source port).
	var mu sync.Mutex
	var sendErr error
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			if out, err := lan.Exec(raw, "-i", "eth1", "-dmac", mac, "-src", testbed.UnderlayPrefix+"200", "-dst", hostIP, "-port", "9100", "-payload", "flow", "-n", "1"); err != nil {
				mu.Lock()
				sendErr = fmt.Errorf("%v: %s", err, out)
				mu.Unlock()
				return
			}
		}
	}()
	defer func() {
		close(stop)
		wg.Wait()
	}()
	reaches := func(name string) {
		t.Helper()
		testbed.Eventually(t, testbed.MinWait, "the flow reaches "+name, func() error {
			mu.Lock()
			err := sendErr
			mu.Unlock()
			if err != nil {
				t.Fatalf("sending the flow: %v", err)
			}
			if !strings.Contains(got(name), "flow") {
				return fmt.Errorf("%s got nothing yet", name)
			}
			return nil
		})
	}
	start("ufa", "10.42.0.10")
	reaches("ufa")
	if ct, err := h.Exec("conntrack", "-L", "-p", "udp", "--orig-port-dst", "9100"); err == nil {
		t.Logf("the flow's connection tracking entry while ufa holds the port:\n%s", ct)
	}
	h.MustDocker(t, "rm", "-f", "ufa")
	start("ufb", "10.42.0.11")
	reaches("ufb")
}
