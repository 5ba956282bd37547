package testkit

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartan-net/tartan/kv"
)

// ConsulBin is the consul binary (CONSUL_BIN, else consul on PATH).
func ConsulBin(t testing.TB) string {
	t.Helper()
	if v := os.Getenv("CONSUL_BIN"); v != "" {
		_, err := os.Stat(v)
		Require(t, err == nil, "CONSUL_BIN="+v+" does not exist (run make consul)")
		return v
	}
	p, err := exec.LookPath("consul")
	Require(t, err == nil, "no consul binary: run make consul, or set CONSUL_BIN")
	return p
}

// Consul is a real single-node Consul server started by the test.
type Consul struct {
	Addr string // host:port of the HTTP API
	// Token is the token the CLI uses: the management token of a server
	// with ACLs on (StartConsulACL), else empty.
	Token string
	ns    *NS
	bin   string
	cmd   *exec.Cmd
}

// PID is the server's process ID (for its CPU time).
func (c *Consul) PID() int { return c.cmd.Process.Pid }

// Signal sends sig to the server (SIGSTOP freezes it: unreachable but intact;
// SIGCONT brings it back).
func (c *Consul) Signal(sig syscall.Signal) error { return c.cmd.Process.Signal(sig) }

// StartConsul runs "consul agent -dev" bound to bind (inside ns when ns is
// not nil) with the HTTP API on httpPort, waits for a leader, and stops it at
// cleanup. Ports other than HTTP, server and serf LAN are off.
func StartConsul(t testing.TB, ns *NS, bind string, httpPort int) *Consul {
	t.Helper()
	return startConsul(t, ns, bind, httpPort, "")
}

// StartConsulACL is StartConsul for a server with Consul's ACLs on and
// deny by default; mgmt is its management token, which its CLI uses.
func StartConsulACL(t testing.TB, ns *NS, bind string, httpPort int, mgmt string) *Consul {
	t.Helper()
	return startConsul(t, ns, bind, httpPort, mgmt)
}

// StartConsulMany is StartConsul for a server that many clients on one
// address use at once (the scale harness: every simulated host is a client
// on loopback with its own connections; Consul allows 200 per address).
func StartConsulMany(t testing.TB, bind string, httpPort int) *Consul {
	t.Helper()
	return startConsulHCL(t, nil, bind, httpPort, "", ` limits { http_max_conns_per_client = 16000 }`)
}

func startConsul(t testing.TB, ns *NS, bind string, httpPort int, mgmt string) *Consul {
	t.Helper()
	return startConsulHCL(t, ns, bind, httpPort, mgmt, "")
}

func startConsulHCL(t testing.TB, ns *NS, bind string, httpPort int, mgmt, extra string) *Consul {
	t.Helper()
	c, stop, err := launchConsul(ConsulBin(t), ns, bind, httpPort, mgmt, nil, extra)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if log := stop(); t.Failed() {
			t.Logf("consul log:\n%s", log)
		}
	})
	return c
}

// LaunchConsul is StartConsul for callers without a test (TestMain). stop
// ends the server, removes its data and returns its log. With join, it is one
// server of a cluster of len(join)+1 (it waits for the cluster's leader).
func LaunchConsul(bin string, ns *NS, bind string, httpPort int, join ...string) (*Consul, func() string, error) {
	return launchConsul(bin, ns, bind, httpPort, "", join, "")
}

func launchConsul(bin string, ns *NS, bind string, httpPort int, mgmt string, join []string, extra string) (*Consul, func() string, error) {
	dir, err := os.MkdirTemp("", "tartan-consul")
	if err != nil {
		return nil, nil, err
	}
	forgetDir := RecordDir(dir)
	hcl := fmt.Sprintf(`ports { http = %d, dns = -1, grpc = -1, grpc_tls = -1, serf_wan = -1, server = %d, serf_lan = %d }`,
		httpPort, httpPort+1, httpPort+2)
	if mgmt != "" {
		hcl += fmt.Sprintf(` acl { enabled = true, default_policy = "deny", tokens { initial_management = %q, agent = %q } }`, mgmt, mgmt)
	}
	hcl += extra
	// A node ID of its own: the server that answers at its address must
	// be this one, not another run's that held the port first.
	nodeID := newNodeID()
	args := []string{"agent", "-dev", "-bind", bind, "-client", bind, "-data-dir", dir, "-hcl", hcl, "-log-level", "warn", "-node-id", nodeID}
	if len(join) > 0 {
		args = []string{"agent", "-server", "-bootstrap-expect", fmt.Sprint(len(join) + 1), "-bind", bind, "-client", bind,
			"-data-dir", dir, "-hcl", hcl, "-log-level", "warn", "-node", "consul-" + bind, "-node-id", nodeID}
		for _, j := range join {
			args = append(args, "-retry-join", j)
		}
	}
	var cmd *exec.Cmd
	if ns != nil {
		cmd = exec.Command("nsenter", append([]string{"--net=" + ns.Path(), bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	logPath := filepath.Join(dir, "consul.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		forgetDir()
		return nil, nil, fmt.Errorf("start consul: %w", err)
	}
	forgetProc := RecordProcess(cmd.Process.Pid, "consul "+bind)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	stop := func() string {
		_ = cmd.Process.Signal(syscall.SIGCONT) // a frozen server cannot stop
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		b, _ := os.ReadFile(logPath)
		os.RemoveAll(dir)
		forgetProc()
		forgetDir()
		return string(b)
	}
	c := &Consul{Addr: fmt.Sprintf("%s:%d", bind, httpPort), Token: mgmt, ns: ns, bin: bin, cmd: cmd}
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-done:
			return nil, nil, fmt.Errorf("consul exited:\n%s", stop())
		default:
		}
		out, err := c.CLI("operator", "raft", "list-peers")
		if err == nil && strings.Contains(out, "leader") {
			if self, serr := c.CLI("info"); serr != nil || !strings.Contains(self, nodeID) {
				log := stop()
				return nil, nil, fmt.Errorf("another Consul answers at %s (a port taken by another run?), not the one started here:\n%s", c.Addr, log)
			}
			return c, stop, nil
		}
		if time.Now().After(deadline) {
			log := stop()
			return nil, nil, fmt.Errorf("consul has no leader after 60s: %v\n%s", err, log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// CLI runs the consul CLI against this server (inside its namespace).
func (c *Consul) CLI(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{c.bin}, args...)
	var cmd *exec.Cmd
	if c.ns != nil {
		cmd = exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + c.ns.Path()}, full...)...)
	} else {
		cmd = exec.CommandContext(ctx, full[0], full[1:]...)
	}
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_ADDR=http://"+c.Addr)
	if c.Token != "" {
		cmd.Env = append(cmd.Env, "CONSUL_HTTP_TOKEN="+c.Token)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("consul %v: %w: %s", args, err, out)
	}
	return string(out), nil
}

// Keys lists the record keys under prefix: tartan's folder markers (keys
// ending in /, kv.KeepFolder) are left out.
func (c *Consul) Keys(t testing.TB, prefix string) []string {
	t.Helper()
	out, err := c.CLI("kv", "get", "-keys", "-separator=", prefix)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, k := range splitLines(out) {
		if !kv.IsFolder(k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// Get is the value stored at key.
func (c *Consul) Get(t testing.TB, key string) string {
	t.Helper()
	out, err := c.CLI("kv", "get", key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// MainWithConsul runs a package's tests with a Consul server on 127.0.0.1 at
// httpPort, or the first of httpPort+10, +20, ... whose ports are free (two
// runs of one package side by side), when CONSUL_BIN is set, storing its address in *addr (left empty
// otherwise: tests needing it then fail in CI and skip loudly elsewhere), as
// Main does: nothing outlives the run.
func MainWithConsul(m *testing.M, httpPort int, addr *string) int {
	return guard(func() int {
		bin := os.Getenv("CONSUL_BIN")
		if bin == "" || fuzzWorker() {
			return m.Run() // no Consul, or a fuzz worker: fuzz targets use none
		}
		// Ports free a moment ago may be taken by another run starting
		// beside this one: the next ones are tried then.
		var c *Consul
		var stop func() string
		var err error
		for try, port := 0, httpPort; try < 5; try, port = try+1, port+10 {
			port = freeConsulPorts(port)
			if c, stop, err = LaunchConsul(bin, nil, "127.0.0.1", port); err == nil {
				break
			}
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stop()
		*addr = c.Addr
		return m.Run()
	})
}

// freeConsulPorts is the first of base, base+10, ... whose three ports
// (HTTP, server, serf LAN: base, base+1, base+2) are free on 127.0.0.1.
func freeConsulPorts(base int) int {
	for p := base; p < base+1000; p += 10 {
		if portsFree(p, p+1, p+2) {
			return p
		}
	}
	return base
}

func portsFree(ports ...int) bool {
	for _, p := range ports {
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		l.Close()
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		u.Close()
	}
	return true
}

// newNodeID is a random Consul node ID (a UUID).
func newNodeID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
