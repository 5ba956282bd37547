//go:build e2e

package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
)

// Restarting the plugin (disable -f/enable) and killing it (kill -9) keep
// running containers connected — a ping running across both loses nothing —
// new containers join afterwards, and removing the old ones cleans up. The
// plugin never relies on Docker re-sending CreateNetwork.
func TestRestart(t *testing.T) {
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
	s.mustReach(t, "rs", "srv")
	s.daemon(t, "after-restart", "rs")

	s.KillPlugin(t)
	s.mustReach(t, "rs", "srv")
	s.mustReach(t, "rs", "after-restart")
	s.daemon(t, "after-kill", "rs")
	s.mustReach(t, "rs", "after-kill")

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
	s.MustDocker(t, "start", "srv")
	s.mustReach(t, "rs", "srv")
	s.MustDocker(t, "rm", "-f", "srv", "pinger", "after-restart", "after-kill")
	s.removeNetworks(t, "rs")
	s.kernelClean(t)
}
