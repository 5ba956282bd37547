//go:build e2e

package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// On a host where Docker uses iptables-legacy, a reboot starts
// the plugin before Docker has made its chains (Docker restores plugins
// before its network controller), and tartan chose its iptables flavour once,
// at start: with no Docker chain anywhere and no legacy table loaded yet, it
// took nft for good. Its accepts then lived in nft while Docker's FORWARD
// policy DROP lived in the legacy tables: both hooks run, legacy dropped what
// nft accepted, and forwarding stayed dead until the plugin was restarted
// (it failed before the fix at the reachability check after the reboot).
// Now the flavour is found again on every apply: within a few resync periods
// tartan's chains are in the legacy tables only and containers reach each
// other and the outside. The reboot is a fresh namespace for the same
// daemon data: no links, no rules, no loaded tables, as after a real boot.
func TestLegacyFirewallAfterReboot(t *testing.T) {
	t.Parallel() // mostly waiting
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox", "iptables-legacy", "iptables-nft-save", "flock")
	hostNS, out, internet := plumb(t, "lg", 10)
	h := testbed.StartDockerdLegacy(t, hostNS)
	h.Image(t)
	s := &single{Host: h, outside: out, internet: internet}
	s.InstallPlugin(t, "RESYNC=2s")
	s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.48.0.0/16", "lg")
	for _, name := range []string{"lg1", "lg2"} {
		s.MustDocker(t, "run", "-d", "--restart", "always", "--name", name, "--network", "lg", "tbox", "sleep", "3600")
	}
	// firewallIn says where tartan's rules are: legacy only, with the
	// jump from FORWARD.
	firewallIn := func() error {
		legacy, err := s.Exec("iptables-legacy", "-w", "5", "-S", "FORWARD")
		if err != nil {
			return fmt.Errorf("iptables-legacy: %v %s", err, legacy)
		}
		if !strings.Contains(legacy, "-j TARTAN-FORWARD") {
			return fmt.Errorf("no jump to TARTAN-FORWARD in the legacy FORWARD chain:\n%s", legacy)
		}
		nft, err := s.Exec("iptables-nft-save")
		if err != nil {
			return fmt.Errorf("iptables-nft-save: %v %s", err, nft)
		}
		if strings.Contains(nft, "TARTAN") {
			return fmt.Errorf("tartan's rules are (also) in nft:\n%s", nft)
		}
		return nil
	}
	reach := func() error {
		for _, target := range []string{s.ip(t, "lg2"), s.internet} {
			if out, err := s.Docker("exec", "lg1", "ping", "-c", "1", "-W", "2", target); err != nil {
				return fmt.Errorf("lg1 does not reach %s: %v %s", target, err, out)
			}
		}
		return nil
	}
	testbed.Eventually(t, 20*time.Second, "tartan's rules in the legacy tables", firewallIn)
	testbed.Eventually(t, 20*time.Second, "lg1 reaches lg2 and the outside", reach)

	// The reboot: a new namespace with the same plumbing.
	hostNS2, out2, _ := plumb(t, "lgb", 10)
	s.outside = out2
	s.Boot(t, hostNS2)
	testbed.Eventually(t, 60*time.Second, "both containers running again", func() error {
		for _, name := range []string{"lg1", "lg2"} {
			if st, err := s.Docker("inspect", "-f", "{{.State.Running}}", name); err != nil || st != "true" {
				return fmt.Errorf("%s running: %s %v", name, st, err)
			}
		}
		return nil
	})
	testbed.Eventually(t, 30*time.Second, "after the reboot, tartan's rules in the legacy tables only", firewallIn)
	testbed.Eventually(t, 30*time.Second, "after the reboot, lg1 reaches lg2 and the outside", reach)
	if strings.Contains(s.PluginLog(), "firewall flavour changed") {
		t.Logf("the plugin guessed nft at boot, before Docker's chains, and moved to legacy")
	} else {
		t.Logf("Docker made its chains before the plugin's first firewall write: nothing to move")
	}
	holdXtablesLock(t, s)
	s.MustDocker(t, "rm", "-f", "lg1", "lg2")
	s.removeNetworks(t, "lg")
}

// holdXtablesLock: another program holds the xtables lock (a
// stuck iptables, a long restore). Before the fix every reconcile waited for
// the lock (iptables -w, no limit) with the driver's lock held, so every
// request of the host queued behind it for as long as the lock was held.
// Now, with reconciles failing on the lock every resync meanwhile, the
// plugin answers at once what needs no firewall change (an endpoint's
// details, an endpoint made and removed: asked on the plugin's socket,
// since Docker itself waits for the lock for its embedded DNS rules in each
// container's namespace); a network create, which needs the firewall, fails
// after iptables' 5 s wait naming the lock, leaves nothing behind and works
// once the lock is free. The lock is the host's own (its /run, shared by its
// dockerd and its plugin, as on a machine of its own).
func holdXtablesLock(t *testing.T, s *single) {
	t.Helper()
	lock := filepath.Join(s.RunDir(), "xtables.lock")
	// -o: the lock is flock's own, not inherited by sleep, so that killing
	// flock frees it.
	hold := exec.Command("flock", "-o", lock, "sleep", "3600")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	forget := testkit.RecordProcess(hold.Process.Pid, "flock")
	released := false
	release := func() {
		if !released {
			released = true
			_ = hold.Process.Kill()
			_ = hold.Wait()
			forget()
		}
	}
	t.Cleanup(release)
	testbed.Eventually(t, 5*time.Second, "the xtables lock held", func() error {
		if exec.Command("flock", "-n", lock, "true").Run() == nil {
			return fmt.Errorf("%s is free", lock)
		}
		return nil
	})
	netID := s.MustDocker(t, "network", "inspect", "-f", "{{.ID}}", "lg")
	epID := s.MustDocker(t, "inspect", "-f", `{{(index .NetworkSettings.Networks "lg").EndpointID}}`, "lg1")
	const fake = "e2e0000000000000000000000000000000000000000000000000000000000001"
	calls := []struct{ path, body string }{
		{"/NetworkDriver.EndpointOperInfo", fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q}`, netID, epID)},
		{"/NetworkDriver.CreateEndpoint", fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q,"Interface":{"Address":"10.48.0.200/16"}}`, netID, fake)},
		{"/NetworkDriver.DeleteEndpoint", fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q}`, netID, fake)},
	}
	// Rounds of calls until two reconciles have failed on the held lock
	// (each waits out iptables' 5 s twice): calls that queued behind a
	// reconcile would complete about once per failed reconcile; answered
	// at once, several rounds fit between two of them.
	met := func() int { // reconciles that failed on the lock: one log line each
		n := 0
		for _, l := range strings.Split(s.PluginLog(), "\n") {
			if strings.Contains(l, "reconcile: ") && strings.Contains(l, "holding the xtables lock") {
				n++
			}
		}
		return n
	}
	var slowest time.Duration
	rounds, between := 0, 0
	deadline := time.Now().Add(testbed.MinWait + 3*time.Minute)
	for met() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no two reconciles met the held lock (%d did) while %d rounds of plugin calls were answered", met(), rounds)
		}
		for _, c := range calls {
			began := time.Now()
			out, err := s.PluginCall(c.path, c.body)
			if err != nil || !strings.HasSuffix(out, "\n200") {
				t.Fatalf("%s with the xtables lock held: %v %s", c.path, err, out)
			}
			slowest = max(slowest, time.Since(began))
		}
		rounds++
		if met() == 1 {
			between++
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("with the xtables lock held: %d rounds of %d plugin calls, %d of them between the first two reconciles that met the lock, the slowest call %s",
		rounds, len(calls), between, slowest.Round(time.Millisecond))
	if between < 2 {
		t.Fatalf("only %d rounds of plugin calls were answered between two reconciles that met the held lock: the calls waited for them", between)
	}
	began := time.Now()
	create := []string{"network", "create", tnet, tipam, "--subnet", "10.49.0.0/16", "lgx"}
	out, err := s.Docker(create...)
	mustFail(t, out, err, "xtables lock")
	t.Logf("with the xtables lock held: docker network create failed after %s: %s", time.Since(began).Round(time.Millisecond), strings.SplitN(err.Error(), "\n", 2)[0])
	release()
	s.MustDocker(t, create...)
	s.removeNetworks(t, "lgx")
}
