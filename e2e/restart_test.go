//go:build e2e

package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
)

// Restarting the plugin (disable -f/enable) and killing it (kill -9) keep
// running containers connected — a ping running across both loses nothing —
// new containers join afterwards, and removing the old ones cleans up. The
// plugin never relies on Docker re-sending CreateNetwork.
func TestRestart(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "r1", 4)
	s.InstallPlugin(t)
	s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=vxlan", "--subnet", "10.70.0.0/16", "rs")
	srv := s.daemon(t, "srv", "rs")
	const count = 30
	s.MustDocker(t, "run", "-d", "--name", "pinger", "--network", "rs", "tbox", "ping", "-c", strconv.Itoa(count), "-W", "1", srv)
	time.Sleep(3 * time.Second)

	s.MustDocker(t, "plugin", "disable", "-f", testbed.PluginName)
	time.Sleep(2 * time.Second)
	s.MustDocker(t, "plugin", "enable", testbed.PluginName)
	s.WaitPlugin(t)
	s.afterPluginRestart(t, "rs")
	s.reachAfterRestart(t, "rs", "srv")
	s.daemonAfterRestart(t, "after-restart", "rs")

	s.KillPlugin(t)
	s.afterPluginRestart(t, "rs")
	s.reachAfterRestart(t, "rs", "srv")
	s.reachAfterRestart(t, "rs", "after-restart")
	s.daemonAfterRestart(t, "after-kill", "rs")
	s.reachAfterRestart(t, "rs", "after-kill")

	testbed.Eventually(t, 2*time.Duration(count)*time.Second, "pinger finished", func() error {
		if st := s.MustDocker(t, "inspect", "-f", "{{.State.Status}}", "pinger"); st != "exited" {
			return fmt.Errorf("pinger is %s", st)
		}
		return nil
	})
	logs := s.MustDocker(t, "logs", "pinger")
	m := regexp.MustCompile(`(\d+) packets transmitted, (\d+) packets received`).FindStringSubmatch(logs)
	if m == nil || m[1] != strconv.Itoa(count) || m[2] != m[1] {
		t.Fatalf("ping across the restart and the kill lost packets:\n%s", logs)
	}
	// dockerd itself restarts (its containers stop with it, the plugin comes
	// back with its state): the network is usable again at once.
	s.Restart(t)
	s.afterPluginRestart(t, "rs")
	s.docker29Retry(t, "docker start srv", func() (string, error) { return s.Docker("start", "srv") })
	s.reachAfterRestart(t, "rs", "srv")
	s.MustDocker(t, "rm", "-f", "srv", "pinger", "after-restart", "after-kill")
	s.removeNetworks(t, "rs")
	s.kernelClean(t)
}

// afterPluginRestart waits until a container starts on network after the
// plugin came back.
func (s *single) afterPluginRestart(t *testing.T, network string) {
	t.Helper()
	s.docker29Retry(t, "a container starts on "+network, func() (string, error) { return s.run(t, network, "true") })
}

// reachAfterRestart is mustReach after a restart of the plugin or dockerd.
func (s *single) reachAfterRestart(t *testing.T, network, target string) {
	t.Helper()
	s.docker29Retry(t, "a container on "+network+" reaches "+target, func() (string, error) { return s.run(t, network, "ping -c 2 -W 2 "+target) })
}

// daemonAfterRestart is daemon after a restart of the plugin or dockerd.
func (s *single) daemonAfterRestart(t *testing.T, name, network string) {
	t.Helper()
	s.docker29Retry(t, "container "+name+" starts on "+network, func() (string, error) {
		out, err := s.Docker("run", "-d", "--name", name, "--network", network, "tbox", "sleep", "3600")
		if err != nil {
			_, _ = s.Docker("rm", "-f", name)
		}
		return out, err
	})
}

// docker29Retry runs fn until it succeeds, for 20 s. Docker 29 can refuse
// containers for a while after the plugin came back with "remote network
// driver: endpoint … not found" (its remote driver is made anew on each
// activation of the plugin, and an endpoint's Join is recorded in one
// instance and looked for in the other); any other failure, or that one
// past 20 s, fails the test.
func (s *single) docker29Retry(t *testing.T, what string, fn func() (string, error)) {
	t.Helper()
	testbed.Eventually(t, 20*time.Second, what+" after the restart", func() error {
		out, err := fn()
		if err != nil && !(strings.Contains(out+err.Error(), "remote network driver: endpoint") && strings.Contains(out+err.Error(), "not found")) {
			t.Fatalf("%s after the restart: %v\n%s", what, err, out)
		}
		return err
	})
}
