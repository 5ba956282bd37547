//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// httpd starts a container on network that serves "ok" on port 7000 and
// returns its address there.
func (s *single) httpd(t *testing.T, name, network string, extra ...string) string {
	t.Helper()
	args := append([]string{"run", "-d", "--name", name, "--network", network}, extra...)
	args = append(args, "tbox", "sh", "-c", "mkdir -p /www && echo ok > /www/i && httpd -f -p 7000 -h /www")
	s.MustDocker(t, args...)
	return s.ip(t, name)
}

// get fetches a URL from a new container on network, giving up after 3 s.
// (busybox wget's own -T crashes; and timeout must not be the container's
// PID 1, which ignores the signal: "&& true" keeps sh there.)
func (s *single) get(t *testing.T, network, url string) (string, error) {
	t.Helper()
	return s.run(t, network, "timeout 3 wget -q -O - "+url+" && true")
}

// fetch tries to GET port 7000 of ip from a new container on network.
func (s *single) fetch(t *testing.T, network, ip string) bool {
	t.Helper()
	out, err := s.get(t, network, "http://"+ip+":7000/i")
	return err == nil && strings.TrimSpace(out) == "ok"
}

// echoes reads how many ICMP echo requests a container has received.
func (s *single) echoes(t *testing.T, name string) string {
	t.Helper()
	out := s.MustDocker(t, "exec", name, "cat", "/proc/net/snmp")
	m := regexp.MustCompile(`(?m)^Icmp: \d+ \d+ \d+ \d+ \d+ \d+ \d+ (\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no Icmp InEchos in %s's /proc/net/snmp:\n%s", name, out)
	}
	return m[1]
}

// Tartan networks are isolated from Docker's bridge networks both ways and
// from each other by ingress interface; the VXLAN port is closed to
// containers; DOCKER-USER holds for tartan traffic (issue 9,
// M5). Before the fix a tartan container
// reached every port of bridge containers ("-s <pool> -j ACCEPT" above
// Docker's rules), and a container with NET_ADMIN/NET_RAW sent packets into
// another tartan network with a spoofed source.
func TestIsolation(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "is1", 7)
	s.InstallPlugin(t)
	s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.vni=77", "--subnet", "10.97.0.0/24", "ta")
	s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=host-gw", "--subnet", "10.98.0.0/24", "tb")
	s.MustDocker(t, "network", "create", "--subnet", "10.99.200.0/24", "bnet")
	s.MustDocker(t, "network", "create", "--internal", "--subnet", "10.99.201.0/24", "bint")
	// tartan's rules are in the tables of Docker's flavour (in nftables
	// mode, where Docker has none, in iptables-nft's).
	if out, err := s.Exec(testbed.Iptables(), "-t", "mangle", "-S", firewall.IsolateChain); err != nil || !strings.Contains(out, "-j DROP") {
		t.Fatalf("Docker's firewall is %s, yet %s has no %s rules: %v\n%s", testbed.FirewallBackend(), testbed.Iptables(), firewall.IsolateChain, err, out)
	}
	if testbed.FirewallBackend() == "iptables-legacy" {
		if out, err := s.Exec("iptables-nft", "-t", "mangle", "-S", firewall.IsolateChain); err == nil {
			t.Fatalf("Docker uses the legacy tables, yet tartan's rules are in the nft ones too:\n%s", out)
		}
	}
	ta := s.httpd(t, "ta1", "ta")
	tb := s.httpd(t, "tb1", "tb")
	b := s.httpd(t, "b1", "bnet")
	bi := s.httpd(t, "bi1", "bint")
	d := s.httpd(t, "d1", "bridge")
	testbed.Eventually(t, 20*time.Second, "the servers answer within their own networks", func() error {
		for _, c := range []struct{ network, ip string }{{"ta", ta}, {"tb", tb}, {"bnet", b}} {
			if out, err := s.get(t, c.network, "http://"+c.ip+":7000/i"); err != nil || strings.TrimSpace(out) != "ok" {
				return fmt.Errorf("%s on %s: %q %v", c.ip, c.network, out, err)
			}
		}
		return nil
	})
	for _, c := range []struct{ from, to, ip string }{
		{"ta", "bridge network bnet", b}, {"ta", "internal bridge network bint", bi}, {"ta", "the default bridge", d},
		{"bnet", "tartan network ta", ta}, {"bridge", "tartan network ta", ta}, {"tb", "tartan network ta", ta}, {"ta", "tartan network tb", tb},
	} {
		if s.fetch(t, c.from, c.ip) {
			t.Errorf("a container on %s reaches port 7000 of %s (%s)", c.from, c.to, c.ip)
		}
	}
	// Through a published port, as between Docker's bridges.
	s.MustDocker(t, "run", "-d", "--name", "pub", "--network", "bnet", "-p", "17000:7000", "tbox", "sh", "-c", "mkdir -p /www && echo ok > /www/i && httpd -f -p 7000 -h /www")
	testbed.Eventually(t, 10*time.Second, "a tartan container reaches a bridge container's published port through the host", func() error {
		out, err := s.get(t, "ta", "http://10.99.7.2:17000/i")
		if err != nil || strings.TrimSpace(out) != "ok" {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})

	// A spoofed source from network ta into network tb gets nowhere: the
	// spoofer takes an address of tb on its own interface and pings tb1.
	before := s.echoes(t, "tb1")
	out, _ := s.Docker("run", "--rm", "--cap-add", "NET_ADMIN", "--network", "ta", "tbox", "sh", "-c",
		"ip addr add 10.98.0.250/32 dev eth0 && ping -c 3 -W 1 -I 10.98.0.250 "+tb)
	if after := s.echoes(t, "tb1"); after != before {
		t.Fatalf("a spoofed source crossed from ta into tb (echo requests %s before, %s after):\n%s", before, after, out)
	}
	// A container sends a VXLAN packet of network ta (VNI 77, to the host's
	// VTEP MAC, inner source in ta's pool) from network tb to its gateway's
	// VXLAN port (the port was open to every container, and the
	// decapsulated packet was forwarded into ta).
	before = s.echoes(t, "ta1")
	mac := kernel.VTEPMAC(endpointHost(t, s, "ta", "ta1"), 77)
	s.MustDocker(t, "run", "-d", "--name", "injector", "--cap-add", "NET_ADMIN", "--network", "tb", "tbox", "sleep", "600")
	pid := s.MustDocker(t, "inspect", "-f", "{{.State.Pid}}", "injector")
	gw := strings.Fields(s.MustDocker(t, "exec", "injector", "sh", "-c", "ip route | grep default"))[2]
	in := func(args ...string) { // the host's iproute2 (busybox's has no vxlan) in the container's namespace
		t.Helper()
		if out, err := testkit.Run(context.Background(), "nsenter", append([]string{"--net=/proc/" + pid + "/ns/net", "ip"}, args...)...); err != nil {
			t.Fatalf("ip %v in the injecting container: %v %s", args, err, out)
		}
	}
	in("link", "add", "vx0", "type", "vxlan", "id", "77", "remote", gw, "dstport", "8472", "dev", "eth0")
	in("addr", "add", "10.97.0.250/24", "dev", "vx0")
	in("link", "set", "vx0", "up")
	in("neigh", "replace", ta, "lladdr", mac.String(), "dev", "vx0", "nud", "permanent")
	out, _ = s.Docker("exec", "injector", "ping", "-c", "3", "-W", "1", ta)
	if sent, _ := testkit.Run(context.Background(), "nsenter", "--net=/proc/"+pid+"/ns/net", "ip", "-s", "link", "show", "vx0"); !regexp.MustCompile(`TX:.*\n\s+\d+\s+[1-9]`).MatchString(sent) {
		t.Fatalf("the injecting container sent nothing through its VXLAN device:\n%s\n%s", sent, out)
	}
	if after := s.echoes(t, "ta1"); after != before {
		t.Fatalf("a VXLAN packet from a container reached network ta (echo requests %s before, %s after):\n%s", before, after, out)
	}

	// An operator's rules hold for tartan traffic: DOCKER-USER in iptables
	// mode; in nftables mode (no DOCKER-USER) a table of the operator's own
	// at the forward hook, as Docker's documentation says.
	s.mustReach(t, "ta", s.internet)
	if testbed.FirewallBackend() == "nftables" {
		nft := func(args ...string) {
			t.Helper()
			if out, err := s.Exec("nft", args...); err != nil {
				t.Fatalf("nft %v: %v %s", args, err, out)
			}
		}
		nft("add", "table", "ip", "operator")
		nft("add", "chain", "ip", "operator", "ops", "{", "type", "filter", "hook", "forward", "priority", "filter", ";", "}")
		nft("add", "rule", "ip", "operator", "ops", "ip", "saddr", "10.97.0.0/24", "ip", "daddr", s.internet, "drop")
		s.mustNotReach(t, "ta", s.internet)
		nft("delete", "table", "ip", "operator")
		s.mustReach(t, "ta", s.internet)
	} else {
		rule := []string{"-s", "10.97.0.0/24", "-d", s.internet, "-j", "DROP"}
		if out, err := s.Exec(testbed.Iptables(), append([]string{"-I", "DOCKER-USER"}, rule...)...); err != nil {
			t.Fatalf("iptables: %v %s", err, out)
		}
		s.mustNotReach(t, "ta", s.internet)
		if out, err := s.Exec(testbed.Iptables(), append([]string{"-D", "DOCKER-USER"}, rule...)...); err != nil {
			t.Fatalf("iptables: %v %s", err, out)
		}
		s.mustReach(t, "ta", s.internet)
	}

	s.MustDocker(t, "rm", "-f", "ta1", "tb1", "b1", "bi1", "d1", "pub", "injector")
	s.removeNetworks(t, "ta", "tb", "bnet", "bint")
	s.kernelClean(t)
}
