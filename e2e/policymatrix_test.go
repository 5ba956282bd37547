//go:build e2e

package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// The probe matrix of issue 26: three hosts with Consul (host 3 on the
// kernel path, FASTPATH=off; hosts 1 and 2 on the fast path where this
// kernel has it), six labelled containers, each serving three TCP ports,
// and three policies (label selectors, set-based requirements, a port
// range, an egress-only policy). Every ordered pair of containers and port
// is probed with a real connection; each probe's verdict is computed by
// the small evaluator below, written from the semantics (Kubernetes'),
// not by tartan's code. The matrix must match: with no policy; with the
// three; while host 2's plugin is killed (kill -9) and until it is back;
// while Consul is frozen; after a change (how long the new verdicts took
// on every host is printed, not asserted); after the policies are removed.
// tartan policy explain agrees with every probe and names the deciding
// policy and rule.
func TestPolicyMatrix(t *testing.T) {
	t.Parallel()
	c := testbed.NewCluster(t, "pm", 1500)
	c.AddHost(t)
	c.AddHost(t)
	c.AddHost(t, "FASTPATH=off")
	const subnet = "10.87.0.0/16"
	for _, h := range c.Hosts {
		h.MustDocker(t, "network", "create", tnet, tipam, "--subnet", subnet, "pm")
	}
	servers := "mkdir -p /www && echo ok > /www/i && (httpd -p 80 -h /www; httpd -p 8080 -h /www; httpd -p 9000 -h /www; sleep 3600)"
	ctrs := []mEndpoint{
		{name: "m-web1", host: 0, labels: map[string]string{"app": "web", "tier": "front"}},
		{name: "m-api1", host: 0, labels: map[string]string{"app": "api", "tier": "back"}},
		{name: "m-db", host: 1, labels: map[string]string{"app": "db", "tier": "back"}},
		{name: "m-web2", host: 1, labels: map[string]string{"app": "web", "tier": "front"}},
		{name: "m-api2", host: 2, labels: map[string]string{"app": "api", "tier": "back"}},
		{name: "m-batch", host: 2, labels: map[string]string{"app": "batch"}},
	}
	for i := range ctrs {
		var labels []string
		for k, v := range ctrs[i].labels {
			labels = append(labels, k+"="+v)
		}
		ctrs[i].ip = startLabelled(t, c.Hosts[ctrs[i].host], "pm", ctrs[i].name, servers, labels...)
	}
	ports := []int{80, 8080, 9000}
	policies := []mPolicy{
		{Name: "api-in", Selector: map[string]string{"app": "api"}, Ingress: []mRule{
			{Peers: []map[string]string{{"tier": "front"}}, Ports: []int{80}},
			{Peers: []map[string]string{{"app": "batch"}}, Ports: []int{9000}},
			{Peers: []map[string]string{{"tier": "front"}}, Proto: "udp", Ports: []int{5353}},
		}},
		{Name: "db-in", Selector: map[string]string{"app": "db"}, Ingress: []mRule{
			{In: map[string][]string{"app": {"api", "batch"}}, From: 8080, To: 9000},
		}},
		{Name: "batch-out", Selector: map[string]string{"app": "batch"}, Types: []string{"egress"}, Egress: []mRule{
			{Peers: []map[string]string{{"tier": "back"}}, Ports: []int{9000}},
		}},
	}
	dir := t.TempDir()
	apply := func(ps []mPolicy) {
		t.Helper()
		file := filepath.Join(dir, "policies.json")
		if err := os.WriteFile(file, renderPolicies(t, ps, subnet), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, rc, stderr := c.Hosts[1].TartanRC(t, "policy", "apply", "-f", file); rc != 0 {
			t.Fatalf("tartan policy apply: exit %d\n%s%s", rc, out, stderr)
		}
	}
	// match waits until every probe has the evaluator's verdict.
	match := func(what string, ps []mPolicy) time.Duration {
		t.Helper()
		start := time.Now()
		testbed.Eventually(t, 3*time.Minute, what, func() error { return mismatches(c, ctrs, ports, ps) })
		return time.Since(start)
	}
	// holds checks the matrix while a fault is under way: a denied probe
	// that passes fails the test at once; an allowed one that fails is
	// probed again (a connection lost on a busy machine is not a verdict),
	// three sweeps in all.
	holds := func(what string, ps []mPolicy) {
		t.Helper()
		var err error
		for try := 0; try < 3; try++ {
			if err = mismatches(c, ctrs, ports, ps); err == nil {
				return
			}
			if mm := (*matrixMismatch)(nil); errors.As(err, &mm) && mm.leaked {
				t.Fatalf("%s: %v", what, err)
			}
		}
		t.Fatalf("%s: %v", what, err)
	}
	match("every probe passes with no policy", nil)
	apply(policies)
	match("the matrix follows the three policies", policies)
	explainAll(t, c.Hosts[0], ctrs, ports, policies)
	forgery(t, c, ctrs)

	// The plugin of host 2 killed: what is denied stays denied, what is
	// allowed stays allowed, while it is away and once it is back.
	h2 := c.Hosts[1]
	pids := h2.PluginPIDs(t)
	if len(pids) != 1 {
		t.Fatalf("want one plugin process on %s, found %v", h2.Name, pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holds("right after host 2's plugin was killed", policies)
	h2.WaitPlugin(t)
	holds("with host 2's plugin back", policies)

	// Consul frozen: the same.
	if err := c.Consul.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozen := true
	defer func() {
		if frozen {
			_ = c.Consul.Signal(syscall.SIGCONT)
		}
	}()
	holds("with Consul frozen", policies)
	time.Sleep(10 * time.Second) // several resync periods without the store
	holds("with Consul frozen for several resyncs", policies)
	if err := c.Consul.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	frozen = false

	// A change: api also takes 8080 from the front tier.
	changed := slices.Clone(policies)
	changed[0].Ingress = append(slices.Clone(changed[0].Ingress), mRule{Peers: []map[string]string{{"tier": "front"}}, Ports: []int{8080}})
	apply(changed)
	took := match("the matrix follows the changed policy", changed)
	t.Logf("a policy change reached every probe of three hosts in %v (probing included; not asserted)", took.Round(100*time.Millisecond))
	for _, p := range changed {
		if out, rc, stderr := c.Hosts[2].TartanRC(t, "policy", "rm", p.Name); rc != 0 {
			t.Fatalf("tartan policy rm %s: exit %d\n%s%s", p.Name, rc, out, stderr)
		}
	}
	match("every probe passes again once the policies are removed", nil)
	for _, h := range c.Hosts {
		for _, e := range ctrs {
			_, _ = h.Docker("rm", "-f", e.name)
		}
	}
}

// startLabelled starts a container on network with labels (driver options
// of its endpoint: Docker 20.10's CLI has them on docker network connect)
// and returns its address.
func startLabelled(t *testing.T, h *testbed.Host, network, name, cmd string, labels ...string) string {
	t.Helper()
	h.MustDocker(t, "create", "--name", name, "tbox", "sh", "-c", cmd)
	h.MustDocker(t, "network", "disconnect", "bridge", name)
	args := []string{"network", "connect"}
	for _, l := range labels {
		args = append(args, "--driver-opt", "tartan.label."+l)
	}
	h.MustDocker(t, append(args, network, name)...)
	h.MustDocker(t, "start", name)
	return h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
}

// mEndpoint is a container of the matrix.
type mEndpoint struct {
	name   string
	host   int
	labels map[string]string
	ip     string
}

// mPolicy is a policy as the test writes it and evaluates it itself.
type mPolicy struct {
	Name     string
	Selector map[string]string
	Types    []string // empty: ingress, and egress when it has egress rules
	Ingress  []mRule
	Egress   []mRule
}

// mRule lets in (or out) peers chosen by any of Peers (labels that must
// all match) or by In (each key's value one of those given), on Ports or
// the range From-To (none: every port).
type mRule struct {
	Peers    []map[string]string
	In       map[string][]string
	Proto    string // tcp when empty
	Ports    []int
	From, To int
}

func (p mPolicy) isolates(dir string) bool {
	if len(p.Types) == 0 {
		return dir == "ingress" || len(p.Egress) > 0
	}
	return slices.Contains(p.Types, dir)
}

func hasLabels(want, labels map[string]string) bool {
	for k, v := range want {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func (r mRule) allows(peer map[string]string, port int) bool {
	if r.Proto != "" && r.Proto != "tcp" {
		return false // the probes are TCP
	}
	peerOK := len(r.Peers) == 0 && len(r.In) == 0
	for _, sel := range r.Peers {
		peerOK = peerOK || hasLabels(sel, peer)
	}
	if len(r.In) > 0 {
		in := true
		for k, vs := range r.In {
			v, ok := peer[k]
			in = in && ok && slices.Contains(vs, v)
		}
		peerOK = peerOK || in
	}
	portOK := len(r.Ports) == 0 && r.From == 0 || slices.Contains(r.Ports, port) || r.From != 0 && port >= r.From && port <= r.To
	return peerOK && portOK
}

// mDecide is one direction's answer for endpoint self (labels) against
// its peer: allowed, and the policy and rule index that allowed it (the
// first in the order of the policies' names; "" when none selects self).
func mDecide(ps []mPolicy, dir string, self, peer map[string]string, port int) (bool, string, int) {
	sorted := slices.Clone(ps)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	selected := false
	for _, p := range sorted {
		if !p.isolates(dir) || !hasLabels(p.Selector, self) {
			continue
		}
		selected = true
		rules := p.Ingress
		if dir == "egress" {
			rules = p.Egress
		}
		for i, r := range rules {
			if r.allows(peer, port) {
				return true, p.Name, i
			}
		}
	}
	return !selected, "", -1
}

func mVerdict(ps []mPolicy, src, dst mEndpoint, port int) bool {
	out, _, _ := mDecide(ps, "egress", src.labels, dst.labels, port)
	in, _, _ := mDecide(ps, "ingress", dst.labels, src.labels, port)
	return out && in
}

// renderPolicies writes the policies as tartan's policy file (a JSON list),
// each limited to the network's pool.
func renderPolicies(t *testing.T, ps []mPolicy, pool string) []byte {
	t.Helper()
	rules := func(rs []mRule, peerKey string) []map[string]any {
		out := []map[string]any{}
		for _, r := range rs {
			var peers []map[string]any
			for _, sel := range r.Peers {
				peers = append(peers, map[string]any{"selector": map[string]any{"labels": sel}})
			}
			if len(r.In) > 0 {
				var match []map[string]any
				for k, vs := range r.In {
					match = append(match, map[string]any{"key": k, "op": "in", "values": vs})
				}
				peers = append(peers, map[string]any{"selector": map[string]any{"match": match}})
			}
			var ports []map[string]any
			proto := cmp.Or(r.Proto, "tcp")
			for _, p := range r.Ports {
				ports = append(ports, map[string]any{"protocol": proto, "port": p})
			}
			if r.From != 0 {
				ports = append(ports, map[string]any{"protocol": proto, "port": fmt.Sprintf("%d-%d", r.From, r.To)})
			}
			if len(ports) == 0 && r.Proto != "" {
				ports = append(ports, map[string]any{"protocol": proto}) // every port of the protocol
			}
			rule := map[string]any{}
			if len(peers) > 0 {
				rule[peerKey] = peers
			}
			if len(ports) > 0 {
				rule["ports"] = ports
			}
			out = append(out, rule)
		}
		return out
	}
	var docs []map[string]any
	for _, p := range ps {
		d := map[string]any{"name": p.Name, "selector": map[string]any{"labels": p.Selector}, "networks": []string{pool}}
		if len(p.Types) > 0 {
			d["types"] = p.Types
		}
		if len(p.Ingress) > 0 {
			d["ingress"] = rules(p.Ingress, "from")
		}
		if len(p.Egress) > 0 {
			d["egress"] = rules(p.Egress, "to")
		}
		docs = append(docs, d)
	}
	b, err := json.MarshalIndent(docs, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// matrixMismatch is mismatches' error: the probes whose result is not the
// evaluator's, and whether one the evaluator denies passed (leaked).
type matrixMismatch struct {
	wrong  []string
	total  int
	leaked bool
}

func (m *matrixMismatch) Error() string {
	return fmt.Sprintf("%d of %d probes differ: %s", len(m.wrong), m.total, strings.Join(m.wrong, "; "))
}

// mismatches probes every ordered pair and port (each source's probes in
// one shell, the sources at once) and names the probes whose result is not
// the evaluator's (a *matrixMismatch).
func mismatches(c *testbed.Cluster, ctrs []mEndpoint, ports []int, ps []mPolicy) error {
	var mu sync.Mutex
	var wrong []string
	leaked := false
	var wg sync.WaitGroup
	for _, src := range ctrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var script strings.Builder
			for _, dst := range ctrs {
				if dst.name == src.name {
					continue
				}
				for _, port := range ports {
					fmt.Fprintf(&script, "if nc -w 2 %s %d </dev/null >/dev/null 2>&1; then echo %s %d ok; else echo %s %d no; fi\n", dst.ip, port, dst.name, port, dst.name, port)
				}
			}
			out, err := c.Hosts[src.host].Docker("exec", src.name, "sh", "-c", script.String())
			got := map[string]bool{}
			for _, l := range strings.Split(out, "\n") {
				if f := strings.Fields(l); len(f) == 3 {
					got[f[0]+" "+f[1]] = f[2] == "ok"
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				wrong = append(wrong, fmt.Sprintf("probes from %s: %v %s", src.name, err, out))
				return
			}
			for _, dst := range ctrs {
				if dst.name == src.name {
					continue
				}
				for _, port := range ports {
					want := mVerdict(ps, src, dst, port)
					if g, ok := got[fmt.Sprintf("%s %d", dst.name, port)]; !ok || g != want {
						wrong = append(wrong, fmt.Sprintf("%s -> %s:%d passes=%v, want %v", src.name, dst.name, port, g, want))
						leaked = leaked || g && !want
					}
				}
			}
		}()
	}
	wg.Wait()
	if len(wrong) > 0 {
		sort.Strings(wrong)
		return &matrixMismatch{wrong: wrong, total: len(ctrs) * (len(ctrs) - 1) * len(ports), leaked: leaked}
	}
	return nil
}

// explainAll asks tartan policy explain (on h) about every probe and
// checks its verdict and, for each direction, the policy and rule the
// evaluator says decided.
func explainAll(t *testing.T, h *testbed.Host, ctrs []mEndpoint, ports []int, ps []mPolicy) {
	t.Helper()
	var wrong []string
	for _, src := range ctrs {
		for _, dst := range ctrs {
			if dst.name == src.name {
				continue
			}
			for _, port := range ports {
				out, rc, stderr := h.TartanRC(t, "policy", "explain", "--json", src.ip, dst.ip, fmt.Sprintf("%d/tcp", port))
				var e struct {
					Allowed         bool
					Egress, Ingress struct {
						Allowed bool
						Policy  string
						Rule    int
					}
				}
				if err := json.Unmarshal([]byte(out), &e); err != nil {
					wrong = append(wrong, fmt.Sprintf("explain %s -> %s:%d: exit %d, %v: %s%s", src.name, dst.name, port, rc, err, out, stderr))
					continue
				}
				want := mVerdict(ps, src, dst, port)
				outOK, outP, outR := mDecide(ps, "egress", src.labels, dst.labels, port)
				inOK, inP, inR := mDecide(ps, "ingress", dst.labels, src.labels, port)
				if e.Allowed != want || (rc == 1) != !want || e.Egress.Allowed != outOK || e.Ingress.Allowed != inOK ||
					e.Egress.Policy != outP || e.Ingress.Policy != inP || (outP != "" && e.Egress.Rule != outR) || (inP != "" && e.Ingress.Rule != inR) {
					wrong = append(wrong, fmt.Sprintf("explain %s -> %s:%d: exit %d %+v, want allowed=%v egress %v %q/%d ingress %v %q/%d",
						src.name, dst.name, port, rc, e, want, outOK, outP, outR, inOK, inP, inR))
				}
			}
		}
	}
	if len(wrong) > 0 {
		t.Fatalf("tartan policy explain differs from the evaluator in %d probes:\n%s", len(wrong), strings.Join(wrong, "\n"))
	}
}

// forgery: a container with NET_RAW sends UDP to m-api1's port 5353, which
// api-in opens to the front tier only, with m-web2's source address (a
// front-tier container of host 2): from host 2 (the fast path) and from
// host 3 (the kernel path) nothing arrives, while m-web2 itself, and the
// forgers with their own addresses, show what arriving looks like
// (m-api1's UDP NoPorts counter: nothing listens there).
func forgery(t *testing.T, c *testbed.Cluster, ctrs []mEndpoint) {
	t.Helper()
	raw := buildStatic(t, "rawframe")
	byName := map[string]mEndpoint{}
	for _, e := range ctrs {
		byName[e.name] = e
	}
	api1, web2 := byName["m-api1"], byName["m-web2"]
	h1 := c.Hosts[api1.host]
	noPorts := func() int {
		out := h1.MustDocker(t, "exec", api1.name, "cat", "/proc/net/snmp")
		var names, values []string
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "Udp:" {
				if names == nil {
					names = f[1:]
				} else {
					values = f[1:]
				}
			}
		}
		if i := slices.Index(names, "NoPorts"); i >= 0 && i < len(values) {
			var n int
			fmt.Sscan(values[i], &n)
			return n
		}
		t.Fatalf("no Udp NoPorts in %s's /proc/net/snmp:\n%s", api1.name, out)
		return 0
	}
	// send sends three datagrams from container name on host h with
	// source src, and says how many reached m-api1.
	send := func(h *testbed.Host, name, src string) int {
		t.Helper()
		pid := h.MustDocker(t, "inspect", "-f", "{{.State.Pid}}", name)
		gw := strings.Fields(h.MustDocker(t, "exec", name, "sh", "-c", "ip route | grep default"))[2]
		_, _ = h.Docker("exec", name, "ping", "-c", "1", "-W", "1", gw) // the gateway's MAC in the neighbour table
		neigh := strings.Fields(h.MustDocker(t, "exec", name, "ip", "neigh", "show", gw))
		i := slices.Index(neigh, "lladdr")
		if i < 0 || i+1 >= len(neigh) {
			t.Fatalf("no MAC for %s's gateway %s: %v", name, gw, neigh)
		}
		before := noPorts()
		if out, err := testkit.Run(context.Background(), "nsenter", "--net=/proc/"+pid+"/ns/net", raw, "-i", "eth0", "-dmac", neigh[i+1],
			"-src", src, "-dst", api1.ip, "-port", "5353", "-payload", "forged", "-n", "3"); err != nil {
			t.Fatalf("rawframe in %s: %v %s", name, err, out)
		}
		time.Sleep(time.Second) // what was sent has arrived, or never will
		return noPorts() - before
	}
	testbed.Eventually(t, testbed.MinWait, "m-web2's own datagrams reach m-api1's port 5353", func() error {
		if send(c.Hosts[web2.host], web2.name, web2.ip) == 0 {
			return fmt.Errorf("none arrived")
		}
		return nil
	})
	for _, h := range []*testbed.Host{c.Hosts[1], c.Hosts[2]} {
		name := "m-forge-" + h.Name
		h.MustDocker(t, "run", "-d", "--name", name, "--cap-add", "NET_RAW", "--network", "pm", "tbox", "sleep", "3600")
		own := h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
		if got := send(h, name, own); got != 0 {
			t.Errorf("%s (no labels) reached m-api1's port 5353 with its own address: %d datagrams", name, got)
		}
		if got := send(h, name, web2.ip); got != 0 {
			t.Errorf("%s, forging m-web2's address, reached m-api1's port 5353: %d datagrams", name, got)
		}
		_, _ = h.Docker("rm", "-f", name)
	}
}
