//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// Swarm services on a tartan network in local scope (SCOPE=local, the
// default): a --config-only network on every node, a --scope swarm network
// made from it on the manager. Tasks take addresses from their own node's
// blocks; every task reaches every other by IP; Docker's service DNS
// (tasks.<service>, dnsrr) answers with all of them on every node; scaling
// up and down leaves no address behind.
func TestSwarmLocalScope(t *testing.T) {
	t.Parallel() // mostly waiting: runs beside the other waiting tests
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "curl", "busybox")
	c := testbed.NewCluster(t, "sw", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t, "LOG_LEVEL=debug")
	}
	mgr := swarmUp(t, c)
	// As contrib/stack.yaml says.
	for _, h := range c.Hosts {
		h.MustDocker(t, "network", "create", "--config-only", "--ipam-driver", testbed.PluginName,
			"-o", "tartan.backend=vxlan", "--subnet", "10.86.0.0/16", "tartan-cfg")
	}
	mgr.MustDocker(t, "network", "create", tnet, "--scope", "swarm", "--config-from", "tartan-cfg", "--attachable", "tartan-swarm")

	mgr.MustDocker(t, "service", "create", "--detach", "--no-resolve-image", "--name", "web", "--network", "tartan-swarm",
		"--endpoint-mode", "dnsrr", "--replicas", "6", "--restart-condition", "none", "tbox", "sleep", "36000")
	tasks := waitTasks(t, c, "web", 6)
	nodes := map[string]bool{}
	for _, tk := range tasks {
		nodes[tk.host.Name] = true
	}
	if len(nodes) != 3 {
		t.Fatalf("6 tasks on %d nodes, want all 3", len(nodes))
	}
	t.Logf("tasks: %v", tasks)
	checkTasks(t, c, "10.86.0.0/16", "web", tasks)
	checkDNS(t, "web", tasks)
	// Scale up and down: the store ends with exactly the two tasks' addresses.
	mgr.MustDocker(t, "service", "scale", "--detach", "web=12")
	waitTasks(t, c, "web", 12)
	mgr.MustDocker(t, "service", "scale", "--detach", "web=2")
	tasks = waitTasks(t, c, "web", 2)
	testbed.Eventually(t, 60*time.Second, "only the 2 remaining tasks' addresses in the store", func() error {
		var got []string
		for _, k := range c.Consul.Keys(t, "tartan/addrs/10.86.0.0-16/") {
			got = append(got, k[strings.LastIndex(k, "/")+1:])
		}
		sort.Strings(got)
		if strings.Join(got, " ") != strings.Join(append([]string{"10.86.0.1"}, ips(tasks)...), " ") {
			return fmt.Errorf("store holds %v, tasks %v", got, ips(tasks))
		}
		return nil
	})
	mgr.MustDocker(t, "service", "rm", "web")

	// contrib/stack.yaml, with the test image: its clients reach the web
	// service by name from every node.
	stack, err := os.ReadFile(filepath.Join(testbed.RepoRoot(t), "contrib", "stack.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "stack.yaml")
	if err := os.WriteFile(file, []byte(strings.ReplaceAll(string(stack), "image: busybox", "image: tbox")), 0o644); err != nil {
		t.Fatal(err)
	}
	mgr.MustDocker(t, "stack", "deploy", "--detach=true", "--resolve-image", "never", "-c", file, "app")
	waitTasks(t, c, "app_web", 3)
	for _, cl := range waitTasks(t, c, "app_client", 3) {
		testbed.Eventually(t, 30*time.Second, "a client on "+cl.host.Name+" reaches web", func() error {
			out, err := cl.host.Docker("exec", cl.id, "wget", "-q", "-O", "-", "http://web/")
			if err != nil || !strings.Contains(out, "hello from") {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
	}
	mgr.MustDocker(t, "stack", "rm", "app")
	testbed.Eventually(t, 60*time.Second, "no task address left", func() error {
		if left := c.Consul.Keys(t, "tartan/addrs/10.86.0.0-16/"); len(left) > 1 {
			return fmt.Errorf("left: %v", left)
		}
		return nil
	})
}

// swarmUp makes host 1 a swarm manager and the others workers; the swarm is
// left at cleanup.
func swarmUp(t *testing.T, c *testbed.Cluster) *testbed.Host {
	t.Helper()
	mgr := c.Hosts[0]
	mgr.MustDocker(t, "swarm", "init", "--advertise-addr", c.Addr[0], "--listen-addr", c.Addr[0]+":2377")
	t.Cleanup(func() {
		for _, h := range c.Hosts {
			_, _ = h.Docker("swarm", "leave", "--force")
		}
	})
	token := mgr.MustDocker(t, "swarm", "join-token", "-q", "worker")
	for i, h := range c.Hosts[1:] {
		h.MustDocker(t, "swarm", "join", "--token", token, "--advertise-addr", c.Addr[i+1], c.Addr[0]+":2377")
	}
	return mgr
}

// checkDNS: tasks.<service> answers with every task's address on every
// node that runs one.
func checkDNS(t *testing.T, service string, tasks []task) {
	t.Helper()
	want := ips(tasks)
	seen := map[string]bool{}
	for _, tk := range tasks {
		if seen[tk.host.Name] {
			continue
		}
		seen[tk.host.Name] = true
		testbed.Eventually(t, 20*time.Second, "tasks."+service+" from "+tk.host.Name, func() error {
			out, _ := tk.host.Docker("exec", tk.id, "nslookup", "tasks."+service)
			if got := answers(out); strings.Join(got, " ") != strings.Join(want, " ") {
				return fmt.Errorf("tasks.%s is %v, want %v\n%s", service, got, want, out)
			}
			return nil
		})
	}
}

type task struct {
	host *testbed.Host
	id   string
	ip   string
}

func (t task) String() string { return t.ip + "@" + t.host.Name }

// waitTasks waits until exactly n tasks of service run (across the nodes)
// with an address, and returns them.
func waitTasks(t *testing.T, c *testbed.Cluster, service string, n int) []task {
	t.Helper()
	var tasks []task
	testbed.Eventually(t, waitFor(n), fmt.Sprintf("%d tasks of %s running", n, service), func() error {
		tasks = nil
		for _, h := range c.Hosts {
			out, err := h.Docker("ps", "-q", "-f", "label=com.docker.swarm.service.name="+service, "-f", "status=running")
			if err != nil {
				return err
			}
			for _, id := range strings.Fields(out) {
				ip, err := h.Docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", id)
				if err != nil || ip == "" {
					return fmt.Errorf("task %s has no address yet", id)
				}
				tasks = append(tasks, task{h, id, ip})
			}
		}
		if len(tasks) != n {
			ps, _ := c.Hosts[0].Docker("service", "ps", "--no-trunc", "--format", "{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}", service)
			return fmt.Errorf("%d running:\n%s", len(tasks), ps)
		}
		return nil
	})
	return tasks
}

func ips(tasks []task) []string {
	var out []string
	for _, tk := range tasks {
		out = append(out, tk.ip)
	}
	sort.Strings(out)
	return out
}

// answers lists the addresses in nslookup's answer section.
func answers(out string) []string {
	var got []string
	parts := strings.SplitN(out, "Name:", 2)
	if len(parts) < 2 {
		return nil
	}
	for _, l := range strings.Split(parts[1], "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Address:" {
			got = append(got, f[1])
		} else if len(f) >= 3 && f[0] == "Address" {
			got = append(got, f[2])
		}
	}
	sort.Strings(got)
	return got
}

// Swarm services on a swarm-scoped tartan network (SCOPE=global): the
// manager's plugin allocates the network (its VNI travels to every node in
// the options) and the task and VIP addresses (global address space); each
// node takes over its tasks' addresses and every other host routes them.
func TestSwarmGlobalScope(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "curl", "busybox")
	c := testbed.NewCluster(t, "sg", 1500)
	for i := 0; i < 3; i++ {
		c.AddHost(t, "LOG_LEVEL=debug", "SCOPE=global")
	}
	mgr := swarmUp(t, c)
	mgr.MustDocker(t, "network", "create", tnet, tipam, "--scope", "swarm", "--attachable",
		"-o", "tartan.backend=vxlan", "--subnet", "10.87.0.0/16", "gnet")
	mgr.MustDocker(t, "service", "create", "--detach", "--no-resolve-image", "--name", "app", "--network", "gnet",
		"--endpoint-mode", "dnsrr", "--replicas", "6", "tbox", "sleep", "36000")
	tasks := waitTasks(t, c, "app", 6)
	// The VNI the manager's plugin allocated reached every node.
	var vnis []string
	for _, h := range c.Hosts {
		vnis = append(vnis, h.MustDocker(t, "network", "inspect", "-f", "{{.Scope}} {{index .Options \"tartan.vni\"}} {{len (index .Options \"tartan.store.id\")}}", "gnet"))
	}
	if vnis[0] != vnis[1] || vnis[1] != vnis[2] || !strings.HasPrefix(vnis[0], "swarm ") || strings.HasSuffix(vnis[0], " 0") {
		t.Fatalf("gnet on the three nodes: %q, want one swarm network with the VNI and store identity from the manager", vnis)
	}
	checkTasks(t, c, "10.87.0.0/16", "app", tasks)
	checkDNS(t, "app", tasks)
	// A VIP service: the VIP comes from the pool through tartan's IPAM (this
	// kernel has no IPVS, so VIP traffic itself is not tested here).
	mgr.MustDocker(t, "service", "create", "--detach", "--no-resolve-image", "--name", "vip", "--network", "gnet",
		"--replicas", "1", "tbox", "sleep", "36000")
	// (--detach: the manager may not have allocated the VIP yet.)
	var vip string
	testbed.Eventually(t, 20*time.Second, "the service's VIP comes from the pool", func() error {
		vip = strings.Split(mgr.MustDocker(t, "service", "inspect", "-f", "{{range .Endpoint.VirtualIPs}}{{.Addr}}{{end}}", "vip"), "/")[0]
		if !strings.HasPrefix(vip, "10.87.") {
			return fmt.Errorf("VIP %q is not from the pool", vip)
		}
		return nil
	})
	if a := storeAddrs(t, c, "10.87.0.0/16"); a[vip] != "endpoint" {
		t.Fatalf("VIP %s is not in the store: %v", vip, a)
	}
	mgr.MustDocker(t, "service", "rm", "vip")

	// Scale up and down; drain a worker and bring it back; restart the
	// manager's plugin: no duplicate address, every task reaches every other.
	mgr.MustDocker(t, "service", "scale", "--detach", "app=12")
	checkTasks(t, c, "10.87.0.0/16", "app", waitTasks(t, c, "app", 12))
	mgr.MustDocker(t, "service", "scale", "--detach", "app=2")
	waitTasks(t, c, "app", 2)
	// No leak: the store holds exactly the addresses Docker uses on the
	// nodes (the 2 tasks and each node's load-balancer attachment) and the
	// gateway.
	testbed.Eventually(t, 60*time.Second, "store == the nodes' endpoints", func() error {
		used := map[string]bool{"10.87.0.1": true}
		for _, h := range c.Hosts {
			out, err := h.Docker("network", "inspect", "-f", "{{range .Containers}}{{.IPv4Address}} {{end}}", "gnet")
			if err != nil && strings.Contains(out, "not found") {
				continue // no task here: Docker removed the node's copy
			}
			if err != nil {
				return err
			}
			for _, a := range strings.Fields(out) {
				used[strings.Split(a, "/")[0]] = true
			}
		}
		stored := storeAddrs(t, c, "10.87.0.0/16")
		for ip := range stored {
			if !used[ip] {
				return fmt.Errorf("store holds %s, which no node uses (nodes use %v)", ip, used)
			}
		}
		for ip := range used {
			if _, ok := stored[ip]; !ok {
				return fmt.Errorf("a node uses %s, which the store lacks", ip)
			}
		}
		return nil
	})
	mgr.MustDocker(t, "service", "scale", "--detach", "app=6")
	waitTasks(t, c, "app", 6)
	w2 := strings.TrimSpace(c.Hosts[1].MustDocker(t, "info", "-f", "{{.Swarm.NodeID}}"))
	mgr.MustDocker(t, "node", "update", "--availability", "drain", w2)
	waitTasksOn(t, c, "app", 6, c.Hosts[1], 0)
	mgr.MustDocker(t, "node", "update", "--availability", "active", w2)
	mgr.MustDocker(t, "plugin", "disable", "-f", testbed.PluginName)
	mgr.MustDocker(t, "plugin", "enable", testbed.PluginName)
	mgr.MustDocker(t, "service", "update", "--detach", "--force", "app") // reschedules onto host 2 again
	testbed.Eventually(t, 180*time.Second, "service update completed", func() error {
		if st := mgr.MustDocker(t, "service", "inspect", "-f", "{{.UpdateStatus.State}}", "app"); st != "completed" {
			return fmt.Errorf("update %s", st)
		}
		return nil
	})
	tasks = waitTasks(t, c, "app", 6)
	checkTasks(t, c, "10.87.0.0/16", "app", tasks)

	mgr.MustDocker(t, "service", "rm", "app")
	testbed.Eventually(t, 60*time.Second, "every task address released", func() error {
		for ip, kind := range storeAddrs(t, c, "10.87.0.0/16") {
			for _, tk := range tasks {
				if tk.ip == ip {
					return fmt.Errorf("task address %s (%s) still in the store", ip, kind)
				}
			}
		}
		return nil
	})
}

// checkTasks: distinct addresses, in the store as held by the node that
// runs each task, and every task reaches every other.
func checkTasks(t *testing.T, c *testbed.Cluster, subnet, service string, tasks []task) {
	t.Helper()
	seen := map[string]string{}
	for _, tk := range tasks {
		if prev, dup := seen[tk.ip]; dup {
			t.Fatalf("duplicate address %s: %s and %s", tk.ip, prev, tk.host.Name)
		}
		seen[tk.ip] = tk.host.Name
	}
	stored := storeAddrs(t, c, subnet)
	for _, tk := range tasks {
		if stored[tk.ip] != "endpoint" {
			t.Fatalf("task address %s is %q in the store", tk.ip, stored[tk.ip])
		}
	}
	for _, a := range tasks {
		for _, b := range tasks {
			if a.ip == b.ip {
				continue
			}
			testbed.Eventually(t, 15*time.Second, fmt.Sprintf("%s: %s reaches %s", service, a, b), func() error {
				if out, err := a.host.Docker("exec", a.id, "ping", "-c", "1", "-W", "1", b.ip); err != nil {
					return fmt.Errorf("%v: %s", err, out)
				}
				return nil
			})
		}
	}
}

// waitTasksOn waits until n tasks run and exactly on of them on host h.
func waitTasksOn(t *testing.T, c *testbed.Cluster, service string, n int, h *testbed.Host, on int) {
	t.Helper()
	testbed.Eventually(t, 120*time.Second, fmt.Sprintf("%d tasks of %s, %d on %s", n, service, on, h.Name), func() error {
		total, here := 0, 0
		for _, x := range c.Hosts {
			out, err := x.Docker("ps", "-q", "-f", "label=com.docker.swarm.service.name="+service, "-f", "status=running")
			if err != nil {
				return err
			}
			k := len(strings.Fields(out))
			total += k
			if x == h {
				here = k
			}
		}
		if total != n || here != on {
			return fmt.Errorf("%d running, %d on %s", total, here, h.Name)
		}
		return nil
	})
}

// waitFor is how long n tasks may take to start on this machine.
func waitFor(n int) time.Duration { return time.Duration(30+10*n) * time.Second }
