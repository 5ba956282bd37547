//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
)

// The quick start on one host with the embedded store, for both backends:
// containers reach each other (ping by name, a TCP transfer), other tartan
// networks are isolated, the outside is reached unless --internal, and
// removing everything leaves no kernel object behind.
func TestSingleHostEmbedded(t *testing.T) {
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
	out, err := s.Docker("run", "--rm", "--network", "net-vxlan", "-p", "8080", "tbox", "true")
	mustFail(t, out, err, "use -p HOSTPORT:8080")
	s.MustDocker(t, "rm", "-f", "pub")

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
