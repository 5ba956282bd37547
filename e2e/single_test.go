//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/plugin/api"
)

// The quick start on one host with the embedded store, for both backends:
// containers reach each other (ping by name, a TCP transfer), other tartan
// networks are isolated, the outside is reached unless --internal, and
// removing everything leaves no kernel object behind.
func TestSingleHostEmbedded(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "s1", 1)
	s.InstallPlugin(t)
	for i, backend := range []string{"vxlan", "host-gw"} {
		subnet := fmt.Sprintf("10.%d.0.0/16", 30+i)
		net := "net-" + backend
		s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend="+backend, "--subnet", subnet, net)
		srv := "srv-" + backend
		ip := s.daemon(t, srv, net)
		if !strings.HasPrefix(ip, fmt.Sprintf("10.%d.", 30+i)) {
			t.Fatalf("%s got %q, outside %s", srv, ip, subnet)
		}
		s.mustReach(t, net, srv)
		s.mustReach(t, net, ip)
		s.transfer(t, net, srv)
		s.mustReach(t, net, s.internet)
	}
	// Isolation between the two networks, both ways.
	s.mustNotReach(t, "net-vxlan", s.ip(t, "srv-host-gw"))
	s.mustNotReach(t, "net-host-gw", s.ip(t, "srv-vxlan"))
	// An internal network reaches its own containers and nothing else.
	s.MustDocker(t, "network", "create", tnet, tipam, "--internal", "--subnet", "10.32.0.0/16", "net-internal")
	s.daemon(t, "srv-internal", "net-internal")
	s.mustReach(t, "net-internal", "srv-internal")
	s.mustNotReach(t, "net-internal", s.internet)
	s.mustNotReach(t, "net-internal", s.ip(t, "srv-vxlan"))
	// Issue 24, audit M4: nor through an unused address of its own pool,
	// which followed the default route out of the host (unmasqueraded)
	// before the pool had its unreachable route. Counted where it would
	// arrive: the outside's raw table.
	s.outside.MustExec(t, testbed.Iptables(), "-t", "raw", "-I", "PREROUTING", "-d", "10.32.0.0/16", "-j", "ACCEPT")
	s.mustNotReach(t, "net-internal", "10.32.200.5")
	if out := s.outside.MustExec(t, testbed.Iptables(), "-t", "raw", "-vnxL", "PREROUTING"); !regexp.MustCompile(`(?m)^\s+0\s+0\s+ACCEPT.*10\.32\.0\.0/16`).MatchString(out) {
		t.Fatalf("an --internal container's packets to an unused address of its pool left the host:\n%s", out)
	}
	if r := s.MustIP(t, "route", "show", "proto", "85"); !strings.Contains(r, "unreachable 10.32.0.0/16") {
		t.Fatalf("no unreachable route for the internal network's pool:\n%s", r)
	}
	// The VXLAN device and its MTU (underlay 1500 - 50).
	if out := s.MustIP(t, "-d", "link", "show", "tartan.256"); !strings.Contains(out, "mtu 1450") || !strings.Contains(out, "dstport 8472") {
		t.Fatalf("vxlan device:\n%s", out)
	}
	if out, _ := s.run(t, "net-vxlan", "cat /sys/class/net/eth0/mtu"); strings.TrimSpace(out) != "1450" {
		t.Fatalf("container mtu on vxlan: %q", out)
	}
	// EndpointOperInfo says where an endpoint lives.
	nid := s.MustDocker(t, "network", "inspect", "-f", "{{.Id}}", "net-vxlan")
	eid := s.MustDocker(t, "inspect", "-f", `{{(index .NetworkSettings.Networks "net-vxlan").EndpointID}}`, "srv-vxlan")
	info, err := s.PluginCall("/NetworkDriver.EndpointOperInfo", fmt.Sprintf(`{"NetworkID":%q,"EndpointID":%q}`, nid, eid))
	if err != nil || !strings.Contains(info, `"tartan.backend":"vxlan"`) || !strings.Contains(info, `"tartan.block":"10.30.`) {
		t.Fatalf("EndpointOperInfo: %v\n%s", err, info)
	}
	// An explicit MTU.
	s.MustDocker(t, "network", "create", tnet, tipam, "-o", "com.docker.network.driver.mtu=1400", "--subnet", "10.33.0.0/16", "net-mtu")
	if out, _ := s.run(t, "net-mtu", "cat /sys/class/net/eth0/mtu"); strings.TrimSpace(out) != "1400" {
		t.Fatalf("container mtu with -o mtu=1400: %q", out)
	}
	// Without --subnet, a pool comes from AUTO_POOL (10.240.0.0/12 by default).
	s.MustDocker(t, "network", "create", tnet, tipam, "net-auto")
	if sub := s.MustDocker(t, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", "net-auto"); sub != "" && !strings.HasPrefix(sub, "10.24") {
		t.Fatalf("automatic subnet %q", sub)
	}
	s.daemon(t, "srv-auto", "net-auto")
	if ip := s.ip(t, "srv-auto"); !strings.HasPrefix(ip, "10.240.") {
		t.Fatalf("container on an automatic pool got %q, want 10.240.x.x", ip)
	}
	s.mustReach(t, "net-auto", "srv-auto")

	// A published port is reached from the outside through the host's address.
	s.MustDocker(t, "run", "-d", "--name", "pub", "--network", "net-vxlan", "-p", "18080:8080", "tbox",
		"sh", "-c", "mkdir -p /www && echo hello-tartan > /www/i && httpd -f -p 8080 -h /www")
	testbed.Eventually(t, 15*time.Second, "published port answers from outside", func() error {
		out, err := s.outside.Exec("curl", "-s", "-m", "2", "http://10.99.1.2:18080/i")
		if err != nil || strings.TrimSpace(out) != "hello-tartan" {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})
	// -p 8080 and -P: a free host port of the ephemeral range, as Docker's
	// bridge picks one; tartan ports says which (docker port cannot: Docker
	// reads a driver's port map only from its built-in drivers).
	s.MustDocker(t, "run", "-d", "--name", "pub-any", "--network", "net-vxlan", "-p", "8080", "--expose", "9090", "-P", "tbox",
		"sh", "-c", "mkdir -p /www && echo hello-any > /www/i && httpd -p 9090 -h /www && httpd -f -p 8080 -h /www")
	anyIP := s.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "pub-any")
	chosen := publishedPorts(t, s.Host, anyIP)
	if len(chosen) != 2 || chosen["8080/tcp"] == 0 || chosen["9090/tcp"] == 0 || chosen["8080/tcp"] == chosen["9090/tcp"] {
		t.Fatalf("-p 8080 -P --expose 9090: published %v", chosen)
	}
	for port, hp := range chosen {
		testbed.Eventually(t, 15*time.Second, fmt.Sprintf("%s published on host port %d answers from outside", port, hp), func() error {
			out, err := s.outside.Exec("curl", "-s", "-m", "2", fmt.Sprintf("http://10.99.1.2:%d/i", hp))
			if err != nil || strings.TrimSpace(out) != "hello-any" {
				return fmt.Errorf("%q %v", out, err)
			}
			return nil
		})
	}
	t.Logf("tartan ports:\n%s", s.Tartan(t, "ports"))
	// A range takes a free port of the range; a range with none free is refused.
	s.MustDocker(t, "run", "-d", "--name", "pub-range", "--network", "net-vxlan", "-p", "18080-18081:8080", "tbox", "sleep", "600")
	rangeIP := s.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "pub-range")
	if got := publishedPorts(t, s.Host, rangeIP); got["8080/tcp"] != 18081 {
		t.Fatalf("-p 18080-18081:8080 with 18080 taken: published %v, want 8080/tcp on 18081", got)
	}
	out, err := s.Docker("run", "--rm", "--network", "net-vxlan", "-p", "18080-18081:8080", "tbox", "true")
	mustFail(t, out, err, "no free host port in 18080-18081 for 8080/tcp")
	s.MustDocker(t, "rm", "-f", "pub", "pub-any", "pub-range")

	// Everything removed: nothing left in the kernel.
	s.MustDocker(t, "rm", "-f", "srv-vxlan", "srv-host-gw", "srv-internal", "srv-auto")
	s.removeNetworks(t, "net-vxlan", "net-host-gw", "net-internal", "net-mtu", "net-auto")
	s.kernelClean(t)
	// No chain or jump of tartan's is left either: the host is as it was.
	for _, table := range []string{"filter", "nat", "raw"} {
		if out, _ := s.Exec(testbed.Iptables()+"-save", "-t", table); strings.Contains(out, "TARTAN") {
			t.Fatalf("firewall rules left in %s after all networks were removed:\n%s", table, out)
		}
	}
}

// publishedPorts reads tartan ports --json on h: the host port of each
// "port/proto" the endpoint with address ip publishes.
func publishedPorts(t *testing.T, h *testbed.Host, ip string) map[string]int {
	t.Helper()
	var ps []api.PublishedPorts
	if err := json.Unmarshal([]byte(h.Tartan(t, "ports", "--json")), &ps); err != nil {
		t.Fatalf("tartan ports --json: %v", err)
	}
	out := map[string]int{}
	for _, p := range ps {
		if p.IP != ip {
			continue
		}
		for _, port := range p.Ports {
			out[fmt.Sprintf("%d/%s", port.Port, port.Proto)] = port.HostPort
		}
	}
	return out
}
