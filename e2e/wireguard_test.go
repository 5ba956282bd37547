//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// TestWireGuard: encrypted networks on three hosts with Consul. A
// -o tartan.backend=wireguard network and a vxlan network with -o encrypted
// (Docker overlay's option) carry ping and TCP between every pair of hosts
// through each host's one WireGuard device (user space here: this kernel
// has no WireGuard), with MTU underlay-80 and the MTU option honoured, and
// isolated from each other. A capture on the underlay switch finds a
// known string in clear on a plain vxlan network and not on the encrypted
// ones, which cross it as UDP to the WireGuard port. The private key stays
// in the host's state folder (0600), never in the store or the log. A key
// rotation under a running ping, live (tartan rotate-key) and by a plugin
// restart with a new WG_ROTATE, is healed on every peer: the test prints
// the packets lost and the time to recover.
func TestWireGuard(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "tcpdump", "busybox")
	c := testbed.NewCluster(t, "w", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t)
	}
	type wnet struct{ name, pool string }
	nets := []wnet{{"wgn", "10.81.0.0/16"}, {"enc", "10.82.0.0/16"}, {"plain", "10.83.0.0/16"}}
	opts := map[string][]string{
		"wgn":   {"-o", "tartan.backend=wireguard"},
		"enc":   {"-o", "encrypted"},
		"plain": {},
	}
	marker := fmt.Sprintf("tartan-in-clear-%d", time.Now().UnixNano())
	ips := map[string][]string{}
	for _, n := range nets {
		for i, h := range c.Hosts {
			h.MustDocker(t, append(append([]string{"network", "create", tnet, tipam, "--subnet", n.pool}, opts[n.name]...), n.name)...)
			name := fmt.Sprintf("%s-%d", n.name, i+1)
			h.MustDocker(t, "run", "-d", "--name", name, "--network", n.name, "tbox", "sh", "-c",
				"mkdir -p /www && echo "+marker+" > /www/m && httpd -f -p 8080 -h /www")
			ips[n.name] = append(ips[n.name], strings.TrimSpace(h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)))
		}
	}
	t.Logf("addresses: %v", ips)
	// One device per host, in user space, with a peer per other host.
	for i, h := range c.Hosts {
		st := hostStatus(t, h)
		if st.WireGuard == nil || st.WireGuard.Mode != "userspace" || st.WireGuard.Port != 51820 {
			t.Fatalf("host %d: WireGuard %+v, want a user-space device on 51820", i+1, st.WireGuard)
		}
		for _, n := range st.Networks {
			if want := map[string]string{"10.81.0.0/16": "wireguard", "10.82.0.0/16": "wireguard", "10.83.0.0/16": "vxlan"}[n.Pool]; n.Backend != want {
				t.Fatalf("host %d: network on %s has backend %s, want %s", i+1, n.Pool, n.Backend, want)
			}
		}
		links := h.MustIP(t, "-o", "link", "show")
		if strings.Count(links, "tartan-wg") != 1 {
			t.Fatalf("host %d: want one tartan-wg device:\n%s", i+1, links)
		}
	}
	// MTU: the underlay's less 80, or the option's.
	if mtu := strings.TrimSpace(c.Hosts[0].MustDocker(t, "exec", "wgn-1", "cat", "/sys/class/net/eth0/mtu")); mtu != "1420" {
		t.Fatalf("wireguard network MTU %s, want 1420 (1500 - 80)", mtu)
	}
	c.Hosts[0].MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.84.0.0/16", "-o", "encrypted", "-o", "com.docker.network.driver.mtu=1300", "mtu1300")
	if mtu := strings.TrimSpace(c.Hosts[0].MustDocker(t, "run", "--rm", "--network", "mtu1300", "tbox", "cat", "/sys/class/net/eth0/mtu")); mtu != "1300" {
		t.Fatalf("-o com.docker.network.driver.mtu=1300: MTU %s", mtu)
	}
	c.Hosts[0].MustDocker(t, "network", "rm", "mtu1300")
	allPairs(t, c, "wgn", ips["wgn"])
	allPairs(t, c, "enc", ips["enc"])
	// tartan doctor finds nothing wrong: every WireGuard peer has answered.
	for i, h := range c.Hosts {
		if out, rc, errs := h.TartanRC(t, "doctor"); rc != 0 {
			t.Fatalf("tartan doctor on host %d: exit %d\n%s%s", i+1, rc, out, errs)
		}
	}
	// NAT: what leaves the pool is masqueraded, as on every routed network
	// (Consul's address on the underlay answers host 1's address).
	if out, err := c.Hosts[0].Docker("exec", "wgn-1", "timeout", "5", "wget", "-q", "-O", "-", "http://"+testbed.ConsulAddr+":8500/v1/status/leader"); err != nil {
		t.Fatalf("wgn-1 does not reach the underlay through NAT: %v: %s", err, out)
	}
	// Isolation: an encrypted network does not reach another.
	if out, err := c.Hosts[0].Docker("exec", "wgn-1", "ping", "-c", "1", "-W", "1", ips["enc"][1]); err == nil {
		t.Fatalf("wgn-1 reached enc-2 (%s): %s", ips["enc"][1], out)
	}

	// The capture, on every port of the underlay switch (a capture on the
	// bridge device itself sees only what the switch namespace receives):
	// the marker crosses the switch in clear on plain vxlan, not on the
	// encrypted networks, which show as UDP to 51820.
	capture := func(net string) (clear bool, wgPackets int) {
		t.Helper()
		dir := t.TempDir()
		pcap := filepath.Join(dir, "u.pcap")
		// A small snapshot and a large buffer: in immediate mode every
		// packet takes a ring frame of the snapshot's size, and with -s 0
		// (256 KiB) the default 2 MiB ring holds 8, so that a loaded
		// machine dropped the very packets it looked for (CI, once). The
		// marker's packets are small.
		cmd := c.Switch.Command("tcpdump", "-Z", "root", "-i", "any", "-U", "-n", "--immediate-mode", "-s", "2048", "-B", "16384", "-w", pcap, "udp")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // tcpdump listening
		for j := 1; j < 3; j++ {
			out := c.Hosts[0].MustDocker(t, "exec", net+"-1", "wget", "-q", "-O", "-", "http://"+ips[net][j]+":8080/m")
			if !strings.Contains(out, marker) {
				t.Fatalf("%s: host 1 fetched %q from host %d", net, out, j+1)
			}
		}
		time.Sleep(500 * time.Millisecond)
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		raw, err := os.ReadFile(pcap)
		if err != nil {
			t.Fatalf("%v: tcpdump said %s", err, stderr.String())
		}
		out, _ := c.Switch.Exec("tcpdump", "-n", "-q", "-r", pcap, "udp", "port", "51820")
		all, _ := c.Switch.Exec("tcpdump", "-n", "-r", pcap)
		t.Logf("%s: captured %d bytes (tcpdump: %s), first packets:\n%s", net, len(raw), strings.TrimSpace(stderr.String()), firstLines(all, 4))
		return strings.Contains(string(raw), marker), strings.Count(out, " UDP, length ")
	}
	if clear, _ := capture("plain"); !clear {
		t.Fatal("the capture did not see the marker on the plain vxlan network: it cannot tell anything")
	}
	for _, n := range []string{"wgn", "enc"} {
		clear, wg := capture(n)
		t.Logf("%s: %d UDP packets to or from port 51820 on the underlay, marker in clear: %v", n, wg, clear)
		if clear || wg < 4 {
			t.Fatalf("%s: marker in clear %v, %d WireGuard packets", n, clear, wg)
		}
	}

	// Forgery on the underlay: a machine on the segment sends pings with
	// the source of host 1's container, in clear, to host 2's. On a
	// host-gw network they arrive (the check can see them); on a wireguard
	// network they are dropped: its traffic between hosts comes only
	// through WireGuard.
	atk := c.AddRouter(t, "atk", "10.81.0.2/32")
	atk.MustIP(t, "addr", "add", "10.83.0.2/32", "dev", "eth1")
	atk.MustIP(t, "route", "add", "10.81.0.0/16", "via", c.Addr[1])
	atk.MustIP(t, "route", "add", "10.83.0.0/16", "via", c.Addr[1])
	inEchos := func(ctr string) int {
		lines := strings.Split(c.Hosts[1].MustDocker(t, "exec", ctr, "cat", "/proc/net/snmp"), "\n")
		for i := 0; i+1 < len(lines); i++ {
			names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
			if len(names) > 0 && names[0] == "Icmp:" && len(values) == len(names) {
				for k, n := range names {
					if n == "InEchos" {
						v, _ := strconv.Atoi(values[k])
						return v
					}
				}
			}
		}
		t.Fatalf("no Icmp InEchos in %s's /proc/net/snmp", ctr)
		return 0
	}
	forged := func(net, src string) int {
		before := inEchos(net + "-2")
		_, _ = atk.Exec("ping", "-c", "3", "-W", "1", "-I", src, ips[net][1])
		return inEchos(net+"-2") - before
	}
	// The check's control: a host-gw network takes its peers' traffic in
	// clear from the underlay (it trusts its L2, as flannel's host-gw
	// does), so forged pings into it arrive; a plain vxlan network takes
	// its pool only from its VXLAN device (issue 24, M3).
	h2 := c.Hosts[1]
	h2.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=host-gw", "--subnet", "10.85.0.0/16", "hgw")
	h2.MustDocker(t, "run", "-d", "--name", "hgw-2", "--network", "hgw", "tbox", "sleep", "36000")
	ips["hgw"] = []string{"", strings.TrimSpace(h2.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "hgw-2"))}
	atk.MustIP(t, "addr", "add", "10.85.255.250/32", "dev", "eth1")
	atk.MustIP(t, "route", "add", "10.85.0.0/16", "via", c.Addr[1])
	if n := forged("hgw", "10.85.255.250"); n == 0 {
		t.Fatal("forged pings did not reach a host-gw network's container either: the check cannot tell anything")
	}
	for net, src := range map[string]string{"plain": "10.83.0.2", "wgn": "10.81.0.2"} {
		if n := forged(net, src); n != 0 {
			t.Fatalf("%d forged pings in clear from the underlay reached the %s network's container", n, net)
		}
	}

	// A host record with a malformed key (and a block of the pool) gets no
	// route: one log line and a problem in tartan status, on each host.
	now := time.Now().UTC()
	block := fmt.Sprintf(`{"cidr":"10.81.200.0/26","pool":"10.81.0.0/16","host":"badbadbadbad0001","expires":%q}`, now.Add(time.Hour).Format(time.RFC3339))
	for key, value := range map[string]string{
		"tartan/hosts/badbadbadbad0001":                `{"id":"badbadbadbad0001","address":"10.98.0.60","version":"test","renewals":true,"wireguardKey":"bm90IGEga2V5","wireguardPort":51820}`,
		"tartan/renewals/badbadbadbad0001":             fmt.Sprintf(`{"renewed":%q}`, now.Format(time.RFC3339)),
		"tartan/blocks/10.81.0.0-16/10.81.200.0-26":    block,
		"tartan/blockfeed/10.81.0.0-16/10.81.200.0-26": fmt.Sprintf(`{"block":%s,"at":%q}`, block, now.Format(time.RFC3339)),
	} {
		if out, err := c.Consul.CLI("kv", "put", key, value); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	testbed.Eventually(t, 20*time.Second, "host 1 reports the malformed key", func() error {
		if st := c.Hosts[0].Tartan(t, "status"); !strings.Contains(st, `its WireGuard key "bm90IGEga2V5" is malformed`) {
			return fmt.Errorf("tartan status:\n%s", st)
		}
		return nil
	})
	time.Sleep(3 * time.Second)
	if n := strings.Count(c.Hosts[0].PluginLog(), "host badbadbadbad0001 (10.98.0.60) cannot be reached through WireGuard"); n != 1 {
		t.Fatalf("the malformed key is in host 1's log %d times, want once", n)
	}
	if r := c.Hosts[0].MustIP(t, "route", "show", "10.81.200.0/26"); r != "" {
		t.Fatalf("a route to the bad host's block: %s", r)
	}

	// Keys (host 2's): the private key is in the state folder, 0600, and
	// nowhere in the store or the plugin's log; the record has the public
	// key.
	keyFile := filepath.Join(h2.StateDir(), "tartan", "wireguard.key")
	fi, err := os.Stat(keyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v, want mode 0600", keyFile, fi, err)
	}
	var kf struct {
		PrivateKey string `json:"privateKey"`
	}
	if b, err := os.ReadFile(keyFile); err != nil || json.Unmarshal(b, &kf) != nil || kf.PrivateKey == "" {
		t.Fatalf("key file: %v", err)
	}
	dump, err := c.Consul.CLI("kv", "export", "tartan/")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(dump, kf.PrivateKey) || strings.Contains(h2.PluginLog(), kf.PrivateKey) {
		t.Fatal("host 2's private key is in the store or in its log")
	}
	hostKey := func(h *testbed.Host) string {
		st := hostStatus(t, h)
		rec := c.Consul.Get(t, "tartan/hosts/"+st.Host)
		var r struct {
			Key string `json:"wireguardKey"`
		}
		if err := json.Unmarshal([]byte(rec), &r); err != nil || r.Key != st.WireGuard.PublicKey {
			t.Fatalf("host record %s does not carry the device's public key %s: %v", rec, st.WireGuard.PublicKey, err)
		}
		return r.Key
	}
	before := hostKey(h2)

	// Live rotation on host 2 under a ping from host 1 to host 2's
	// container (10 per second).
	lost, gap := pingThrough(t, c.Hosts[0], "wgn-1", ips["wgn"][1], 60, func() {
		h2.Tartan(t, "rotate-key")
	})
	t.Logf("tartan rotate-key on host 2 under ping from host 1: %d of 60 lost, outage (longest run lost or longest round trip) %v", lost, gap)
	after := hostKey(h2)
	if after == before {
		t.Fatal("tartan rotate-key left the host's public key as it was")
	}
	// Host 1 has re-keyed: its peer for host 2 has the new key and a
	// handshake made with it; the old key is gone.
	testbed.Eventually(t, 10*time.Second, "host 1 handshakes with host 2's new key", func() error {
		peers := hostStatus(t, c.Hosts[0]).WireGuard.Peers
		for _, p := range peers {
			if p.PublicKey == before {
				return fmt.Errorf("host 1 still has host 2's old key")
			}
			if p.PublicKey == after && !p.LastHandshake.IsZero() {
				return nil
			}
		}
		return fmt.Errorf("no handshake with host 2's new key: %+v", peers)
	})
	allPairs(t, c, "wgn", ips["wgn"])
	// Rotation by a restart with a new WG_ROTATE: the plugin's restart
	// stops the user-space device for its length.
	lost, gap = pingThrough(t, c.Hosts[0], "wgn-1", ips["wgn"][1], 150, func() {
		h2.MustDocker(t, "plugin", "disable", "-f", testbed.PluginName)
		h2.MustDocker(t, "plugin", "set", testbed.PluginName, "WG_ROTATE=2026-12-04")
		h2.MustDocker(t, "plugin", "enable", testbed.PluginName)
	})
	t.Logf("plugin restart with a new WG_ROTATE on host 2 under ping from host 1: %d of 150 lost, outage (longest run lost or longest round trip) %v", lost, gap)
	if k := hostKey(h2); k == after || k == before {
		t.Fatal("WG_ROTATE changed and the plugin restarted with its old key")
	}
	allPairs(t, c, "wgn", ips["wgn"])
	allPairs(t, c, "enc", ips["enc"])
}

func firstLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[:min(n, len(l))], "\n")
}

// allPairs checks ping and TCP from every host's container of a network to
// every other host's.
func allPairs(t *testing.T, c *testbed.Cluster, net string, ips []string) {
	t.Helper()
	for i, h := range c.Hosts {
		for j := range c.Hosts {
			if i == j {
				continue
			}
			src := fmt.Sprintf("%s-%d", net, i+1)
			testbed.Eventually(t, 20*time.Second, fmt.Sprintf("%s: host %d reaches host %d's container at %s (ping and TCP)", net, i+1, j+1, ips[j]), func() error {
				if out, err := h.Docker("exec", src, "ping", "-c", "1", "-W", "1", ips[j]); err != nil {
					return fmt.Errorf("ping: %v: %s", err, out)
				}
				if out, err := h.Docker("exec", src, "timeout", "5", "wget", "-q", "-O", "-", "http://"+ips[j]+":8080/m"); err != nil {
					return fmt.Errorf("wget: %v: %s", err, out)
				}
				return nil
			})
		}
	}
}

// pingThrough pings dst from container src on h, count pings 100 ms apart,
// running during() after the first second; it returns the pings lost and
// the outage: the longest run of lost pings as a time, or the longest
// round trip if that is longer (WireGuard holds packets while it
// handshakes, so an outage may show as late answers). Every ping after the
// outage must be answered: the last ten are.
func pingThrough(t *testing.T, h *testbed.Host, src, dst string, count int, during func()) (lost int, longest time.Duration) {
	t.Helper()
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := h.Docker("exec", src, "ping", "-i", "0.1", "-W", "1", "-c", strconv.Itoa(count), dst)
		done <- result{out, err}
	}()
	time.Sleep(time.Second)
	during()
	r := <-done
	got := map[int]bool{}
	for _, m := range regexp.MustCompile(`seq=(\d+) .*time=([0-9.]+) ms`).FindAllStringSubmatch(r.out, -1) {
		n, _ := strconv.Atoi(m[1])
		got[n] = true
		ms, _ := strconv.ParseFloat(m[2], 64)
		longest = max(longest, time.Duration(ms*float64(time.Millisecond)).Round(time.Millisecond))
	}
	run := 0
	for i := 0; i < count; i++ {
		if got[i] {
			run = 0
			continue
		}
		lost++
		run++
		longest = max(longest, time.Duration(run)*100*time.Millisecond)
	}
	for i := count - 10; i < count; i++ {
		if !got[i] {
			t.Fatalf("ping %s from %s did not recover: ping %d of %d unanswered\n%s", dst, src, i, count, r.out)
		}
	}
	return lost, longest
}
