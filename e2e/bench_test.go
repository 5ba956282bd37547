//go:build bench

package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// TestBench measures tartan against the host's own network and Docker's own
// drivers on the same test bed, in one run, interleaving the paths round by
// round (A B C A B C …) and reporting medians, because such a machine drifts.
// It prints a markdown table and writes it to build/bench.md. It asserts
// nothing about the figures: targets are read, not enforced.
func TestBench(t *testing.T) {
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "iperf3")
	rounds := envInt("BENCH_ROUNDS", 5)
	secs := envInt("BENCH_SECONDS", 3)
	root := testbed.RepoRoot(t)
	rr := filepath.Join(t.TempDir(), "rr")
	testkit.MustRun(t, "go", "build", "-o", rr, filepath.Join(root, "e2e", "rr"))

	c := testbed.NewCluster(t, "bn", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t)
	}
	h1, h2, h3 := c.Hosts[0], c.Hosts[1], c.Hosts[2]

	// Docker's overlay needs a swarm of the same hosts.
	h1.MustDocker(t, "swarm", "init", "--advertise-addr", c.Addr[0], "--listen-addr", c.Addr[0]+":2377")
	token := h1.MustDocker(t, "swarm", "join-token", "-q", "worker")
	h2.MustDocker(t, "swarm", "join", "--token", token, "--advertise-addr", c.Addr[1], c.Addr[0]+":2377")
	h1.MustDocker(t, "network", "create", "-d", "overlay", "--attachable", "--subnet", "10.70.0.0/24", "ov")

	for _, n := range []struct{ name, subnet, opts string }{
		{"bvx", "10.71.0.0/16", "tartan.backend=vxlan"},
		{"bgw", "10.72.0.0/16", "tartan.backend=host-gw"},
		{"bdr", "10.73.0.0/16", "tartan.directrouting=true"},
		{"bwg", "10.76.0.0/16", "tartan.backend=wireguard"},
	} {
		for _, h := range []*testbed.Host{h1, h2} {
			h.MustDocker(t, "network", "create", tnet, tipam, "-o", n.opts, "--subnet", n.subnet, n.name)
		}
	}
	for _, h := range []*testbed.Host{h1, h2} { // dual-stack vxlan, measured over IPv6
		h.MustDocker(t, "network", "create", tnet, tipam, "--ipv6", "--subnet", "10.75.0.0/16", "--subnet", "fd00:75::/64", "bv6")
	}
	h1.MustDocker(t, "network", "create", "--subnet", "10.74.0.0/24", "bbr")
	// The kernel path beside the fast path, in the same rounds: two more
	// hosts with FASTPATH=off (the gain of the eBPF fast path is the
	// difference between their rows and the fast ones).
	k := testbed.NewCluster(t, "bk", 1500)
	k1, k2 := k.AddHost(t, "FASTPATH=off"), k.AddHost(t, "FASTPATH=off")
	for _, n := range []struct{ name, subnet, opts string }{{"kvx", "10.93.0.0/16", "tartan.backend=vxlan"}, {"kgw", "10.94.0.0/16", "tartan.backend=host-gw"}} {
		for _, h := range []*testbed.Host{k1, k2} {
			h.MustDocker(t, "network", "create", tnet, tipam, "-o", n.opts, "--subnet", n.subnet, n.name)
		}
	}
	// The kernel's VXLAN device on its own, host to host (no container, no
	// veth, no tartan), as flannel's VXLAN carries a host's own traffic:
	// what any path through a VXLAN device can reach on this machine.
	for i, h := range []*testbed.Host{k1, k2} {
		h.MustIP(t, "link", "add", "benchvx", "type", "vxlan", "id", "4000", "local", k.Addr[i], "dev", "eth1", "dstport", "8472", "nolearning")
		h.MustIP(t, "addr", "add", fmt.Sprintf("192.168.250.%d/24", i+1), "dev", "benchvx")
		h.MustIP(t, "link", "set", "benchvx", "up")
	}
	for i, h := range []*testbed.Host{k1, k2} {
		peer := []*testbed.Host{k2, k1}[i]
		mac := strings.Fields(peer.MustIP(t, "-br", "link", "show", "benchvx"))[2]
		h.MustIP(t, "neigh", "add", fmt.Sprintf("192.168.250.%d", 2-i), "lladdr", mac, "dev", "benchvx", "nud", "permanent")
		if out, err := h.Exec("bridge", "fdb", "append", mac, "dev", "benchvx", "dst", k.Addr[1-i]); err != nil {
			t.Fatalf("fdb on %s: %v %s", h.Name, err, out)
		}
	}
	// macvlan on the hosts' "physical" NIC: tartan's, and Docker's own with
	// a hand-carved --ip-range per host (its IPAM is per host).
	for i, h := range []*testbed.Host{h1, h2} {
		h.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=macvlan", "-o", "parent=eth1", "--subnet", "10.77.0.0/24", "bmv")
		h.MustDocker(t, "network", "create", "-d", "macvlan", "-o", "parent=eth1", "--subnet", "10.78.0.0/24",
			"--ip-range", fmt.Sprintf("10.78.0.%d/26", 64*(i+1)), "dmv")
	}

	type endpoint = benchEndpoint
	ctrOf := func(h *testbed.Host, name, network, field string) endpoint {
		h.MustDocker(t, "run", "-d", "--name", name, "--network", network, "tbox", "sleep", "36000")
		pid := h.MustDocker(t, "inspect", "-f", "{{.State.Pid}}", name)
		ip := h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{."+field+"}}{{end}}", name)
		return endpoint{"/proc/" + pid + "/ns/net", ip}
	}
	ctr := func(h *testbed.Host, name, network string) endpoint { return ctrOf(h, name, network, "IPAddress") }
	ctr6 := func(h *testbed.Host, name, network string) endpoint {
		return ctrOf(h, name, network, "GlobalIPv6Address")
	}
	type path = benchPath
	paths := []path{
		{"host to host (underlay)", "", endpoint{h1.Path(), c.Addr[0]}, endpoint{h2.Path(), c.Addr[1]}},
		{"tartan vxlan", "Docker overlay", ctr(h1, "vx1", "bvx"), ctr(h2, "vx2", "bvx")},
		{"host to host over a VXLAN device (no containers)", "Docker overlay", endpoint{k1.Path(), "192.168.250.1"}, endpoint{k2.Path(), "192.168.250.2"}},
		{"tartan host-gw", "Docker overlay", ctr(h1, "gw1", "bgw"), ctr(h2, "gw2", "bgw")},
		{"tartan vxlan + directrouting", "Docker overlay", ctr(h1, "dr1", "bdr"), ctr(h2, "dr2", "bdr")},
		{"tartan vxlan, IPv6", "Docker overlay", ctr6(h1, "v61", "bv6"), ctr6(h2, "v62", "bv6")},
		{"tartan wireguard (user space, encrypted)", "Docker overlay", ctr(h1, "wg1", "bwg"), ctr(h2, "wg2", "bwg")},
		{"Docker overlay (swarm)", "", ctr(h1, "ov1", "ov"), ctr(h2, "ov2", "ov")},
		{"tartan macvlan", "Docker macvlan", ctr(h1, "mv1", "bmv"), ctr(h2, "mv2", "bmv")},
		{"Docker macvlan", "", ctr(h1, "dm1", "dmv"), ctr(h2, "dm2", "dmv")},
		{"tartan vxlan, same host", "Docker bridge", ctr(h1, "vx3", "bvx"), ctr(h1, "vx4", "bvx")},
		{"Docker bridge, same host", "", ctr(h1, "br1", "bbr"), ctr(h1, "br2", "bbr")},
		{"tartan vxlan, kernel path (FASTPATH=off)", "Docker overlay", ctr(k1, "kv1", "kvx"), ctr(k2, "kv2", "kvx")},
		{"tartan host-gw, kernel path (FASTPATH=off)", "Docker overlay", ctr(k1, "kg1", "kgw"), ctr(k2, "kg2", "kgw")},
		{"tartan vxlan, same host, kernel path (FASTPATH=off)", "Docker bridge", ctr(k1, "kv3", "kvx"), ctr(k1, "kv4", "kvx")},
	}
	res := measure(t, paths, rounds, secs, rr)

	// BENCH_PERF=1: where the cycles go on each path, from a system-wide
	// perf profile (cpu-clock) of one more single-stream run; the top
	// kernel symbols land in build/perf.md.
	if os.Getenv("BENCH_PERF") != "" {
		profile(t, filepath.Join(root, "build", "perf.md"), secs, paths, func(p path) { res.iperf(p, 1) })
	}

	// Control plane: docker run on tartan against Docker's bridge, interleaved.
	var runT, runB []float64
	for i := 0; i < 30; i++ {
		for _, n := range []string{"bvx", "bbr"} {
			start := time.Now()
			h1.MustDocker(t, "run", "--rm", "--network", n, "tbox", "true")
			d := time.Since(start).Seconds() * 1000
			if n == "bvx" {
				runT = append(runT, d)
			} else {
				runB = append(runB, d)
			}
		}
	}
	// A new host's block: host 3 claims one (through the plugin's IPAM, as
	// Docker would) and hosts 1 and 2 are polled until both route it. Host
	// 3 has no network of the pool: a network there would keep the pool
	// (and its block) when the pool is released below.
	var prop []float64
	for i := 0; i < 20; i++ {
		poolID := "local:10.71.0.0/16"
		if _, err := h3.PluginCall("/IpamDriver.RequestPool", `{"AddressSpace":"tartan-local","Pool":"10.71.0.0/16"}`); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		out, err := h3.PluginCall("/IpamDriver.RequestAddress", fmt.Sprintf(`{"PoolID":%q,"Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:01:%02x"}}`, poolID, i))
		if err != nil || !strings.HasSuffix(out, "200") {
			t.Fatalf("request address on host 3: %v %s", err, out)
		}
		var seen [2]bool
		for !(seen[0] && seen[1]) {
			for k, h := range []*testbed.Host{h1, h2} {
				if !seen[k] && strings.Contains(h.MustIP(t, "route", "show", "proto", "84"), "via "+c.Addr[2]) {
					seen[k] = true
				}
			}
			if time.Now().After(start.Add(testbed.MinWait)) {
				t.Fatal("host 3's block never reached hosts 1 and 2")
			}
		}
		prop = append(prop, time.Since(start).Seconds()*1000)
		var resp struct{ Address string }
		_ = json.Unmarshal([]byte(out[:strings.LastIndex(out, "\n")]), &resp)
		_, _ = h3.PluginCall("/IpamDriver.ReleaseAddress", fmt.Sprintf(`{"PoolID":%q,"Address":%q}`, poolID, strings.Split(resp.Address, "/")[0]))
		// Releasing the pool on host 3 gives its empty block back; wait until
		// hosts 1 and 2 withdraw the route before the next round.
		_, _ = h3.PluginCall("/IpamDriver.ReleasePool", fmt.Sprintf(`{"PoolID":%q}`, poolID))
		testbed.Eventually(t, 30*time.Second, "block withdrawn", func() error {
			for _, h := range []*testbed.Host{h1, h2} {
				if strings.Contains(h.MustIP(t, "route", "show", "proto", "84"), "via "+c.Addr[2]) {
					return fmt.Errorf("still routed")
				}
			}
			return nil
		})
	}

	// An MTU 9000 underlay (BENCH_JUMBO=0 leaves it out): vxlan and host-gw
	// on two more hosts, against that underlay's own host-to-host path.
	var jumbo []path
	var jres benchResults
	if os.Getenv("BENCH_JUMBO") != "0" {
		j := testbed.NewCluster(t, "bj", 9000)
		j1, j2 := j.AddHost(t), j.AddHost(t)
		for _, n := range []struct{ name, subnet, opts string }{{"jvx", "10.91.0.0/16", "tartan.backend=vxlan"}, {"jgw", "10.92.0.0/16", "tartan.backend=host-gw"}} {
			for _, h := range []*testbed.Host{j1, j2} {
				h.MustDocker(t, "network", "create", tnet, tipam, "-o", n.opts, "--subnet", n.subnet, n.name)
			}
		}
		jumbo = []path{
			{"host to host (underlay, MTU 9000)", "", endpoint{j1.Path(), j.Addr[0]}, endpoint{j2.Path(), j.Addr[1]}},
			{"tartan vxlan, MTU 9000", "", ctr(j1, "jv1", "jvx"), ctr(j2, "jv2", "jvx")},
			{"tartan host-gw, MTU 9000", "", ctr(j1, "jg1", "jgw"), ctr(j2, "jg2", "jgw")},
		}
		jres = measure(t, jumbo, rounds, secs, rr)
	}

	// The table.
	var b strings.Builder
	host := os.Getenv("BENCH_MACHINE")
	if host == "" {
		host = machine()
	}
	fmt.Fprintf(&b, "Measured %s on %s; Docker %s; %d interleaved rounds of %ds per path: medians, and in brackets the range over the rounds (a ratio's round by round).\n\n",
		time.Now().UTC().Format("2006-01-02"), host, h1.MustDocker(t, "version", "-f", "{{.Server.Version}}"), rounds, secs)
	// The machine's own speed, so that two tables from two machines can be
	// compared: its host-to-host path and a docker run on Docker's bridge.
	fmt.Fprintf(&b, "This machine: host to host %s Gbit/s with one stream; `docker run --rm` on Docker's bridge %.0f ms (median of 30).\n\n",
		spread(res.one[paths[0].name], "%.2f"), median(runB))
	writeRows(&b, paths, res)
	fmt.Fprintf(&b, "\nDocker overlay with `--opt encrypted` (IPsec ESP) cannot run on this kernel: %s. "+
		"The tartan plugin's peak resident memory on host 1 after every row: %s.\n", espProblem(), peakRSS(h1.PluginPIDs(t)))
	if len(jumbo) > 0 {
		fmt.Fprintf(&b, "\nOn an MTU 9000 underlay (two more hosts, the same rounds; Docker's overlay not set up there):\n\n")
		writeRows(&b, jumbo, jres)
	}
	sort.Float64s(prop)
	fmt.Fprintf(&b, "\n| control plane | tartan | Docker bridge | ratio |\n|---|---|---|---|\n")
	fmt.Fprintf(&b, "| `docker run --rm` (median of 30, interleaved) | %.0f ms | %.0f ms | %.2f |\n", median(runT), median(runB), median(runT)/median(runB))
	fmt.Fprintf(&b, "| new host's block in every peer's routing table (20 blocks) | p50 %.0f ms, p99 %.0f ms | — | — |\n", median(prop), prop[len(prop)*99/100])
	fmt.Println("\n" + b.String())
	_ = os.MkdirAll(filepath.Join(root, "build"), 0o755)
	if err := os.WriteFile(filepath.Join(root, "build", "bench.md"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	h2.MustDocker(t, "swarm", "leave", "--force")
	h1.MustDocker(t, "swarm", "leave", "--force")
}

// espProblem says why Docker's encrypted overlay cannot run here (the
// kernel has no IPsec ESP with the AEAD it uses), or that it can.
func espProblem() string {
	ns := fmt.Sprintf("tt-esp-%d", os.Getpid())
	if err := exec.Command("ip", "netns", "add", ns).Run(); err != nil {
		return "not checked: " + err.Error()
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	out, err := exec.Command("ip", "-n", ns, "xfrm", "state", "add", "src", "10.0.0.1", "dst", "10.0.0.2", "proto", "esp", "spi", "0x100",
		"mode", "transport", "aead", "rfc4106(gcm(aes))", "0x0102030405060708090a0b0c0d0e0f1011121314", "128").CombinedOutput()
	if err != nil {
		return "an ESP state with rfc4106(gcm(aes)), as Docker makes, is refused (" + strings.TrimSuffix(strings.TrimSpace(string(out)), ".") + ")"
	}
	return "none found (it could be measured: add a row)"
}

// peakRSS is the peak resident memory of processes.
func peakRSS(pids []int) string {
	var parts []string
	for _, pid := range pids {
		if v := testkit.PeakRSS(pid); v != "unknown" {
			parts = append(parts, v)
		}
	}
	if len(parts) == 0 {
		return "unknown"
	}
	return strings.Join(parts, ", ")
}

// benchResults are a bench run's samples per path name.
type benchResults struct {
	one, four, p50, p99, cost1, cost4 map[string][]float64
	// iperf runs one more iperf3 over a path (for the perf profile).
	iperf func(p benchPath, streams int) float64
}

// measure starts an iperf3 and an rr server at every path's destination and
// runs the rounds: each round every path with 1 stream, then with 4, then
// the request/response test, so that drift hits every path alike.
func measure(t *testing.T, paths []benchPath, rounds, secs int, rr string) benchResults {
	t.Helper()
	type path = benchPath
	type endpoint = benchEndpoint
	// One iperf3 and one rr server per destination.
	for _, p := range paths {
		for _, args := range [][]string{{"iperf3", "-s", "-B", p.srv.ip}, {rr, "-s", net.JoinHostPort(p.srv.ip, "7000")}} {
			cmd := exec.Command("nsenter", append([]string{"--net=" + p.srv.netns}, args...)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		}
	}
	time.Sleep(time.Second)
	in := func(e endpoint, args ...string) string {
		out, err := testkit.Run(t.Context(), "nsenter", append([]string{"--net=" + e.netns}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	// cpu is the machine's busy time so far, in seconds (/proc/stat: user,
	// nice, system, irq and softirq): every test host is a namespace of
	// this one kernel, so it is both hosts' work, the user-space WireGuard
	// of the plugins included (and the iperf3 processes', the same on
	// every row).
	cpu := func() float64 {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0]) // cpu user nice system idle iowait irq softirq
		busy := 0.0
		for _, i := range []int{1, 2, 3, 6, 7} {
			v, _ := strconv.ParseFloat(f[i], 64)
			busy += v
		}
		return busy / 100 // USER_HZ
	}
	cost1, cost4 := map[string][]float64{}, map[string][]float64{} // CPU ms per Gbit carried
	iperf := func(p path, streams int) float64 {
		before := cpu()
		out := in(p.client, "iperf3", "-c", p.srv.ip, "-t", fmt.Sprint(secs), "-P", fmt.Sprint(streams), "-J")
		used := cpu() - before
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("iperf3 %s: %v\n%s", p.name, err, out)
		}
		gbps := r.End.SumReceived.BitsPerSecond / 1e9
		cost := map[int]map[string][]float64{1: cost1, 4: cost4}[streams]
		if gbps > 0 {
			cost[p.name] = append(cost[p.name], used*1000/(gbps*float64(secs)))
		}
		return gbps
	}
	one, four, p50, p99 := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	for r := 0; r < rounds; r++ {
		for _, p := range paths {
			one[p.name] = append(one[p.name], iperf(p, 1))
		}
		for _, p := range paths {
			four[p.name] = append(four[p.name], iperf(p, 4))
		}
		for _, p := range paths {
			f := strings.Fields(in(p.client, rr, "-c", net.JoinHostPort(p.srv.ip, "7000"), "-n", "3000"))
			a, _ := strconv.ParseFloat(f[0], 64)
			b, _ := strconv.ParseFloat(f[1], 64)
			p50[p.name], p99[p.name] = append(p50[p.name], a), append(p99[p.name], b)
		}
		t.Logf("round %d of %d done", r+1, rounds)
	}

	return benchResults{one: one, four: four, p50: p50, p99: p99, cost1: cost1, cost4: cost4, iperf: iperf}
}

// writeRows writes the table of paths: each against the first (the
// host-to-host path) and against the Docker driver it stands beside. Every
// figure is the median of the rounds with its spread (min–max) beside it;
// a ratio is taken round by round (the two paths ran side by side in it),
// so that the spread is the ratio's own, not the two paths' drift.
func writeRows(b *strings.Builder, paths []benchPath, res benchResults) {
	fmt.Fprintf(b, "| path (container to container unless said) | 1 stream Gbit/s | × host | × Docker | 4 streams Gbit/s | × host | × Docker | RR p50 µs | RR p99 µs | CPU ms/Gbit, 1 stream | CPU ms/Gbit, 4 streams |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	hostName := paths[0].name
	for _, p := range paths {
		vs := func(m map[string][]float64, other string) string {
			if other == "" {
				return "—"
			}
			return spread(ratios(m[p.name], m[other]), "%.2f")
		}
		docker := map[string]string{"Docker overlay": "Docker overlay (swarm)", "Docker bridge": "Docker bridge, same host", "Docker macvlan": "Docker macvlan"}[p.versus]
		hostRef := hostName
		if p.name == hostName {
			hostRef = ""
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", p.name,
			spread(res.one[p.name], "%.2f"), vs(res.one, hostRef), vs(res.one, docker), spread(res.four[p.name], "%.2f"), vs(res.four, hostRef), vs(res.four, docker),
			spread(res.p50[p.name], "%.0f"), spread(res.p99[p.name], "%.0f"), spread(res.cost1[p.name], "%.0f"), spread(res.cost4[p.name], "%.0f"))
	}
}

// ratios divides a by b round by round.
func ratios(a, b []float64) []float64 {
	out := make([]float64, 0, len(a))
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// spread is the median of v with its range over the rounds, "12.1
// (11.8–12.5)"; one round has no range.
func spread(v []float64, format string) string {
	if len(v) == 0 {
		return "—"
	}
	m := fmt.Sprintf(format, median(v))
	if len(v) == 1 {
		return m
	}
	return fmt.Sprintf("%s ("+format+"–"+format+")", m, slices.Min(v), slices.Max(v))
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				model = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	out, _ := exec.Command("nproc").Output()
	kernel, _ := exec.Command("uname", "-r").Output()
	return fmt.Sprintf("%s cores of %s, kernel %s, veth underlay MTU 1500", strings.TrimSpace(string(out)), model, strings.TrimSpace(string(kernel)))
}

type benchEndpoint struct{ netns, ip string }

type benchPath struct {
	name, versus string
	client, srv  benchEndpoint
}

// profile records a system-wide perf profile (cpu-clock, kernel and user)
// while run drives each path, and writes each path's top symbols, idle
// left out, to out.
func profile(t *testing.T, out string, secs int, paths []benchPath, run func(benchPath)) {
	var b strings.Builder
	for _, p := range paths {
		data := filepath.Join(t.TempDir(), "perf.data")
		rec := exec.Command("perf", "record", "-a", "-e", "cpu-clock", "-o", data, "--", "sleep", fmt.Sprint(secs+1))
		if err := rec.Start(); err != nil {
			t.Fatalf("perf record: %v", err)
		}
		forget := testkit.RecordProcess(rec.Process.Pid, "perf record")
		run(p)
		err := rec.Wait()
		forget()
		if err != nil {
			t.Fatalf("perf record: %v", err)
		}
		rep, err := exec.Command("perf", "report", "-i", data, "--no-children", "--stdio", "--sort", "symbol", "--percent-limit", "1").Output()
		if err != nil {
			t.Fatalf("perf report: %v", err)
		}
		fmt.Fprintf(&b, "### %s\n\n```\n", p.name)
		n := 0
		for _, l := range strings.Split(string(rep), "\n") {
			if l = strings.TrimSpace(l); l == "" || strings.HasPrefix(l, "#") || strings.Contains(l, "safe_halt") || strings.Contains(l, "cpu_idle") {
				continue
			}
			if n++; n > 25 {
				break
			}
			fmt.Fprintln(&b, l)
		}
		fmt.Fprintf(&b, "```\n\n")
	}
	fmt.Println("\n" + b.String())
	_ = os.MkdirAll(filepath.Dir(out), 0o755)
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}
