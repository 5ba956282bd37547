//go:build e2e

package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// Docker 28's gw-priority picks which of a container's networks is its
// gateway, and from 29 only the gateway endpoint is told to publish the
// container's ports (Program/Revoke ExternalConnectivity come as the gateway
// moves). A published port follows the gateway from one tartan network to
// another and back, always reachable from outside, and a port withdrawn
// from an endpoint leaves no rule behind.
func TestGatewayPriority(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "gp1", 13)
	testkit.Require(t, s.EngineMajor(t) >= 28, "gw-priority needs Docker 28 or later (make e2e28, e2e29)")
	s.InstallPlugin(t)
	s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.52.0.0/24", "pa")
	s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=host-gw", "--subnet", "10.53.0.0/24", "pb")
	s.MustDocker(t, "run", "-d", "--name", "web", "--network", "pa", "-p", "18090:80", "tbox",
		"sh", "-c", "mkdir -p /www && echo ok > /www/i && httpd -f -p 80 -h /www")
	addr := func(network string) string {
		return s.MustDocker(t, "inspect", "-f", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", network), "web")
	}
	publishedTo := func(ip string) {
		t.Helper()
		testbed.Eventually(t, 15*time.Second, "port 18090 leads to "+ip+" only", func() error {
			rules, err := s.Exec(testbed.Iptables(), "-t", "nat", "-S", firewall.DNATChain)
			if err != nil {
				return err
			}
			if n := strings.Count(rules, "--dport 18090"); n != 1 || !strings.Contains(rules, "--to-destination "+ip+":80") {
				return fmt.Errorf("%d rules for 18090, want one to %s:\n%s", n, ip, rules)
			}
			out, err := s.outside.Exec("curl", "-s", "-m", "2", "http://10.99.13.2:18090/i")
			if err != nil || strings.TrimSpace(out) != "ok" {
				return fmt.Errorf("from outside: %q %v", out, err)
			}
			return nil
		})
	}
	publishedTo(addr("pa"))

	// pb takes over as the gateway: the port moves to web's address there.
	s.MustDocker(t, "network", "connect", "--gw-priority", "10", "pb", "web")
	if routes := s.MustDocker(t, "exec", "web", "ip", "route"); !regexp.MustCompile(`(?m)^default .*dev eth1`).MatchString(routes) {
		t.Fatalf("with --gw-priority 10 on pb, web's routes are:\n%s", routes)
	}
	publishedTo(addr("pb"))

	// pb goes: the gateway and the port come back to pa.
	s.MustDocker(t, "network", "disconnect", "pb", "web")
	publishedTo(addr("pa"))

	s.MustDocker(t, "rm", "-f", "web")
	s.removeNetworks(t, "pa", "pb")
	s.kernelClean(t)
}
