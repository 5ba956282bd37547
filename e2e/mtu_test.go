//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// Large packets cross hosts whole: a full-size ping with "don't fragment" and
// a TCP transfer at the network's MTU, on underlays of 1500 and 9000 bytes,
// for vxlan (MTU = underlay - 50) and host-gw (MTU = underlay).
func TestLargePackets(t *testing.T) {
	t.Parallel() // mostly waiting: runs beside the other waiting tests
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "ping", "busybox")
	for _, under := range []int{1500, 9000} {
		t.Run(fmt.Sprint(under), func(t *testing.T) {
			c := testbed.NewCluster(t, fmt.Sprintf("u%d", under/1000), under)
			for i := 0; i < 2; i++ {
				c.AddHost(t)
			}
			for k, backend := range []string{"vxlan", "host-gw"} {
				mtu := under
				if backend == "vxlan" {
					mtu -= 50
				}
				name := "big-" + backend
				pids := make([]string, 2)
				ips := make([]string, 2)
				for i, h := range c.Hosts {
					h.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend="+backend, "--subnet", fmt.Sprintf("10.%d.0.0/16", 65+k), name)
					cn := fmt.Sprintf("%s-%d", name, i+1)
					h.MustDocker(t, "run", "-d", "--name", cn, "--network", name, "tbox", "sh", "-c",
						"mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1024 count=16384 2>/dev/null && httpd -f -p 8080 -h /www")
					pids[i] = h.MustDocker(t, "inspect", "-f", "{{.State.Pid}}", cn)
					ips[i] = h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", cn)
					if got := strings.TrimSpace(h.MustDocker(t, "exec", cn, "cat", "/sys/class/net/eth0/mtu")); got != fmt.Sprint(mtu) {
						t.Fatalf("%s on host %d: container MTU %s, want %d", backend, i+1, got, mtu)
					}
				}
				nsPing := func(size int) (string, error) {
					return testkit.Run(t.Context(), "nsenter", "--net=/proc/"+pids[0]+"/ns/net", "ping", "-M", "do", "-c", "3", "-W", "2", "-s", fmt.Sprint(size), ips[1])
				}
				testbed.Eventually(t, 20*time.Second, backend+": hosts connected", func() error { _, err := nsPing(56); return err })
				if out, err := nsPing(mtu - 28); err != nil || !strings.Contains(out, " 0% packet loss") {
					t.Fatalf("%s, underlay %d: full-size ping (%d bytes, DF) lost: %v\n%s", backend, under, mtu-28, err, out)
				}
				if out, err := nsPing(mtu - 27); err == nil {
					t.Fatalf("%s, underlay %d: a ping one byte over the MTU went through with DF set:\n%s", backend, under, out)
				}
				want := strings.Fields(c.Hosts[1].MustDocker(t, "exec", name+"-2", "md5sum", "/www/blob"))[0]
				got, err := c.Hosts[0].Docker("exec", name+"-1", "sh", "-c", "wget -q -O - http://"+ips[1]+":8080/blob | md5sum")
				if err != nil || strings.Fields(got)[0] != want {
					t.Fatalf("%s, underlay %d: 16 MiB TCP transfer: %v %q, want %s", backend, under, err, got, want)
				}
			}
		})
	}
}
