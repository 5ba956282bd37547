//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// A machine on the underlay plays an attacker on the LAN and sends UDP
// frames at one host's containers, addressed to the host's MAC (issue 24):
//   - into a vxlan network and an --internal vxlan network, with a source
//     in the network's own pool: dropped (audit M3: the kernel path took a
//     vxlan pool's addresses from the underlay);
//   - into a host-gw network in a frame tagged for VLAN 100 (a trunk):
//     dropped (audit M1: the fast path took it for the untagged underlay);
//   - the same untagged, as a host-gw peer sends: delivered (host-gw trusts
//     its L2, as flannel's and Calico's native routing do), which shows the
//     dropped frames came as far as the host.
func TestUnderlayInjection(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "busybox", "go")
	raw := buildStatic(t, "rawframe")
	listener := buildStatic(t, "stream") // the containers' UDP listener (busybox's nc has no UDP)
	c := testbed.NewCluster(t, "ij", 1500)
	h := c.AddHost(t)
	lan := c.AddRouter(t, "lan", "198.51.100.7/32")
	nets := []struct{ name, subnet, src string }{
		{"ivx", "10.38.0.0/16", "10.38.200.5"},
		{"iin", "10.40.0.0/16", "10.40.200.5"},
		{"ihg", "10.39.0.0/16", "10.39.200.5"},
	}
	ips := map[string]string{}
	for _, n := range nets {
		args := []string{"network", "create", tnet, tipam, "--subnet", n.subnet}
		switch n.name {
		case "iin":
			args = append(args, "--internal")
		case "ihg":
			args = append(args, "-o", "tartan.backend=host-gw")
		}
		h.MustDocker(t, append(args, n.name)...)
		h.MustDocker(t, "run", "-d", "--name", n.name, "--network", n.name, "tbox", "sleep", "36000")
		h.MustDocker(t, "cp", listener, n.name+":/stream")
		h.MustDocker(t, "exec", "-d", n.name, "sh", "-c", "/stream -u :9000 > /udp.log 2>&1")
		ips[n.name] = h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", n.name)
	}
	mac := strings.Fields(h.MustIP(t, "-br", "link", "show", "eth1"))[2]
	send := func(to, src, payload string, vlan int) {
		t.Helper()
		if out, err := lan.Exec(raw, "-i", "eth1", "-dmac", mac, "-src", src, "-dst", ips[to], "-payload", payload, "-vlan", fmt.Sprint(vlan)); err != nil {
			t.Fatalf("send %s: %v %s", payload, err, out)
		}
	}
	got := func(name string) string {
		out, _ := h.Docker("exec", name, "cat", "/udp.log")
		return out
	}
	send("ivx", "10.38.200.5", "into-vxlan", 0)
	send("iin", "10.40.200.5", "into-internal", 0)
	send("ihg", "10.39.200.6", "tagged-100", 100)
	testbed.Eventually(t, testbed.MinWait, "the untagged host-gw frame delivered", func() error {
		send("ihg", "10.39.200.5", "untagged", 0)
		if !strings.Contains(got("ihg"), "untagged") {
			return fmt.Errorf("not yet: %q", got("ihg"))
		}
		return nil
	})
	for name, payload := range map[string]string{"ivx": "into-vxlan", "iin": "into-internal", "ihg": "tagged-100"} {
		if strings.Contains(got(name), payload) {
			t.Errorf("%s received the injected %q from a machine on the underlay", name, payload)
		}
	}
}
