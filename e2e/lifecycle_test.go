//go:build e2e

package e2e

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// pingEvery is the interval of the continuous pings that measure how long
// an operation interrupts connectivity.
const pingEvery = 0.2

// startPinger runs a container on network that pings target count times,
// every pingEvery seconds.
func startPinger(t *testing.T, h *testbed.Host, name, network, target string, count int) {
	t.Helper()
	h.MustDocker(t, "run", "-d", "--name", name, "--network", network, "tbox",
		"ping", "-c", strconv.Itoa(count), "-i", fmt.Sprint(pingEvery), "-W", "1", target)
}

// pingLoss waits for a pinger to finish and returns how long its lost
// packets stand for, in seconds.
func pingLoss(t *testing.T, h *testbed.Host, name string, count int) float64 {
	t.Helper()
	testbed.Eventually(t, time.Duration(float64(count)*pingEvery*3+20)*time.Second, name+" finished", func() error {
		if st := h.MustDocker(t, "inspect", "-f", "{{.State.Status}}", name); st != "exited" {
			return fmt.Errorf("%s is %s", name, st)
		}
		return nil
	})
	logs := h.MustDocker(t, "logs", name)
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("%s: no ping summary:\n%s", name, logs)
	}
	sent, _ := strconv.Atoi(m[1])
	got, _ := strconv.Atoi(m[2])
	lost := float64(sent-got) * pingEvery
	t.Logf("%s: %d of %d pings answered (%.1f s lost)", name, got, sent, lost)
	return lost
}

// endpointHost is the tartan host ID that EndpointOperInfo reports for a
// container's endpoint on network.
func endpointHost(t *testing.T, s *single, network, container string) string {
	t.Helper()
	nid := s.MustDocker(t, "network", "inspect", "-f", "{{.Id}}", network)
	eid := s.MustDocker(t, "inspect", "-f", fmt.Sprintf(`{{(index .NetworkSettings.Networks %q).EndpointID}}`, network), container)
	info, err := s.PluginCall("/NetworkDriver.EndpointOperInfo", fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q}`, nid, eid))
	m := regexp.MustCompile(`"tartan.host":"([0-9a-f]+)"`).FindStringSubmatch(info)
	if err != nil || m == nil {
		t.Fatalf("EndpointOperInfo of %s: %v\n%s", container, err, info)
	}
	return m[1]
}

// Everyday operations on one network or plugin never break another network
// (issue 9). Each part failed before its fix:
//   - a refused duplicate create (same subnet) released the live network's
//     pool: "pool … is not registered (it was released)" on the next run;
//   - make plugin again (rm -f + create + enable) gave the plugin a new host
//     ID and an empty local store, and its first reconcile deleted every
//     container's link;
//   - a second tartan plugin on the host deleted the first one's links.
func TestLifecycleSafety(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "l1", 6)
	s.InstallPlugin(t)
	s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.95.0.0/24", "n1")
	srv := s.daemon(t, "c1", "n1")

	// H1: the same subnet again is refused, and n1 is untouched.
	out, err := s.Docker("network", "create", tnet, tipam, "--subnet", "10.95.0.0/24", "n2")
	mustFail(t, out, err, "10.95.0.0/24", "already used by tartan network")
	s.mustReach(t, "n1", srv)
	s.daemon(t, "c2", "n1")
	s.mustReach(t, "n1", "c2")

	// H4: the README's way to replace the plugin, under a continuous ping.
	before := endpointHost(t, s, "n1", "c1")
	const count = 150 // 30 s
	startPinger(t, s.Host, "pinger", "n1", srv, count)
	time.Sleep(2 * time.Second)
	s.InstallPlugin(t)
	if after := endpointHost(t, s, "n1", "c1"); after != before {
		t.Fatalf("host ID changed across the reinstall: %s, then %s", before, after)
	}
	s.mustReach(t, "n1", "c2")
	s.daemon(t, "c3", "n1")
	s.mustReach(t, "n1", "c3")
	// A second tartan plugin on the host is refused with the reason and
	// leaves the first one's objects alone.
	// (Docker refuses two plugins of the same content: this one differs in
	// its description and a file.)
	dir := filepath.Join(s.Dir, "plugin2")
	testkit.MustRun(t, "cp", "-a", filepath.Join(testbed.TreeBuild(t), "plugin"), dir)
	testkit.MustRun(t, "sed", "-i", "s/tartan: multi-host/tartan (second): multi-host/", filepath.Join(dir, "config.json"))
	testkit.MustRun(t, "touch", filepath.Join(dir, "rootfs", "second"))
	s.MustDocker(t, "plugin", "create", "tartan2:latest", dir)
	s.MustDocker(t, append([]string{"plugin", "set", "tartan2:latest"}, s.Mounts(t)...)...)
	s.MustDocker(t, "plugin", "enable", "tartan2:latest")
	out, err = s.Docker("network", "create", "-d", "tartan2:latest", "--ipam-driver", "tartan2:latest", "--subnet", "10.96.0.0/24", "other")
	mustFail(t, out, err, "another tartan plugin is running on this host")
	s.MustDocker(t, "plugin", "disable", "-f", "tartan2:latest")
	s.MustDocker(t, "plugin", "rm", "-f", "tartan2:latest")
	if lost := pingLoss(t, s.Host, "pinger", count); lost > 1 {
		t.Fatalf("the reinstall cut a running container off for %.1f s (at most 1 s allowed):\n%s", lost, s.MustDocker(t, "logs", "--tail", "5", "pinger"))
	}
	s.mustReach(t, "n1", "c1")
	s.MustDocker(t, "rm", "-f", "c1", "c2", "c3", "pinger")
	s.removeNetworks(t, "n1")
	s.kernelClean(t)
	if leftover := strings.TrimSpace(s.MustDocker(t, "network", "ls", "-q", "--filter", "driver=tartan:latest")); leftover != "" {
		t.Fatalf("networks left: %s", leftover)
	}
}
