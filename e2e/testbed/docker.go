package testbed

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"github.com/tartan-net/tartan/internal/testkit"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Host is one test host: a namespace with its own dockerd.
type Host struct {
	testkit.NS
	Dir      string // data, logs
	ExecRoot string // exec-root (short: plugin socket paths are limited)
	Socket   string
	cmd      *exec.Cmd
	done     chan struct{}
	log      string
	path     string // PATH for the daemon; empty: DOCKERD_PATH, else the test's own
	forget   func() // the running daemon's record (RecordRoot)
}

// FirewallBackend is the firewall backend the daemons run with
// (DOCKERD_FIREWALL): iptables (the nft flavour, the default),
// iptables-legacy (the daemons' iptables commands are the legacy ones, as on
// a host whose alternatives point there), or nftables (Docker 29's
// --firewall-backend; Docker then neither makes an iptables rule nor enables
// IP forwarding, which each test host does as an operator would).
func FirewallBackend() string {
	switch v := os.Getenv("DOCKERD_FIREWALL"); v {
	case "nftables", "iptables-legacy":
		return v
	}
	return "iptables"
}

// Iptables is the iptables command of the daemons' flavour.
func Iptables() string {
	if FirewallBackend() == "iptables-legacy" {
		return "iptables-legacy"
	}
	return "iptables"
}

// Iptables6 is the ip6tables command of the daemons' flavour.
func Iptables6() string { return "ip6" + strings.TrimPrefix(Iptables(), "ip") }

// DockerdBin is the dockerd to run (DOCKERD env to choose another engine).
func DockerdBin() string {
	if v := os.Getenv("DOCKERD"); v != "" {
		return v
	}
	return "dockerd"
}

// StartDockerd starts a dockerd inside ns and waits until it answers. It is
// stopped (by its pid), and its mounts and directories removed, at cleanup.
func StartDockerd(t testing.TB, ns testkit.NS) *Host {
	t.Helper()
	return startDockerd(t, ns, FirewallBackend() == "iptables-legacy")
}

// StartDockerdLegacy is StartDockerd for a daemon whose iptables is
// iptables-legacy (a host where Docker uses the legacy tables): its PATH
// starts with a folder where iptables, ip6tables and their -save and
// -restore are the legacy ones.
func StartDockerdLegacy(t testing.TB, ns testkit.NS) *Host {
	t.Helper()
	return startDockerd(t, ns, true)
}

func startDockerd(t testing.TB, ns testkit.NS, legacy bool) *Host {
	t.Helper()
	h := &Host{NS: ns, Dir: filepath.Join(os.TempDir(), "tartan-e2e", ns.Name), ExecRoot: "/run/tt/" + ns.Name}
	h.Socket = filepath.Join(h.ExecRoot, "docker.sock")
	testkit.CleanDir(h.Dir)
	testkit.CleanDir(h.ExecRoot)
	forgetDirs := []func(){testkit.RecordDir(h.Dir), testkit.RecordDir(h.ExecRoot)}
	for _, d := range []string{h.Dir, h.ExecRoot, h.RunDir()} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h.log = filepath.Join(h.Dir, "dockerd.log")
	if legacy {
		multi, err := exec.LookPath("xtables-legacy-multi")
		testkit.Require(t, err == nil, "no xtables-legacy-multi (Debian's iptables package has it)")
		bin := filepath.Join(h.Dir, "legacy-bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"} {
			if err := os.Symlink(multi, filepath.Join(bin, cmd)); err != nil {
				t.Fatal(err)
			}
		}
		h.path = bin + ":" + cmp.Or(os.Getenv("DOCKERD_PATH"), os.Getenv("PATH"))
	}
	h.launch(t)
	t.Cleanup(func() {
		h.stop(t)
		for _, f := range forgetDirs {
			f()
		}
	})
	return h
}

// launch starts the daemon (appending to its log) and waits until it answers.
func (h *Host) launch(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(h.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"--net=" + h.Path(), DockerdBin(),
		"--data-root", filepath.Join(h.Dir, "data"), "--exec-root", h.ExecRoot,
		"-H", "unix://" + h.Socket, "--pidfile", filepath.Join(h.ExecRoot, "docker.pid"),
		"--label", "tartan-test-host=" + h.Name,
		// A cluster's registry (AddRegistry) speaks plain HTTP, as
		// loopback registries may by default.
		"--insecure-registry", UnderlayPrefix + "0/24"}
	if FirewallBackend() == "nftables" {
		args = append(args, "--firewall-backend=nftables")
		if out, err := h.Exec("sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			t.Fatalf("enable IP forwarding in %s: %v %s", h.Name, err, out)
		}
	}
	h.cmd = exec.Command("nsenter", args...)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.Env = os.Environ()
	h.cmd.Env = append(h.cmd.Env, "XTABLES_LOCKFILE="+filepath.Join(h.RunDir(), "xtables.lock"))
	if p := cmp.Or(h.path, os.Getenv("DOCKERD_PATH")); p != "" {
		h.cmd.Env = append(h.cmd.Env, "PATH="+p)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("start dockerd in %s: %v", h.Name, err)
	}
	h.forget = testkit.RecordDockerd(h.cmd.Process.Pid, h.Name, h.Socket, h.ExecRoot, h.Dir)
	done := make(chan struct{})
	h.done = done
	go func() { _ = h.cmd.Wait(); logf.Close(); close(done) }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if v, err := h.Docker("version", "--format", "{{.Server.Version}}"); err == nil {
			t.Logf("dockerd %s running in %s", v, h.Name)
			return
		}
		select {
		case <-done:
			t.Fatalf("dockerd in %s exited:\n%s", h.Name, h.LogTail(30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd in %s did not answer in 90s:\n%s", h.Name, h.LogTail(30))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// EngineMajor is the running engine's major version (20, 26, 28, ...).
func (h *Host) EngineMajor(t testing.TB) int {
	t.Helper()
	v := h.MustDocker(t, "version", "--format", "{{.Server.Version}}")
	major, _, _ := strings.Cut(strings.TrimSpace(v), ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		t.Fatalf("engine version %q: %v", v, err)
	}
	return n
}

// Restart stops the daemon and starts it again on the same data (and waits
// for the plugin, which the daemon starts again with it).
func (h *Host) Restart(t testing.TB) {
	t.Helper()
	h.halt()
	h.launch(t)
	if out, err := h.Docker("plugin", "ls", "-q"); err == nil && strings.TrimSpace(out) != "" {
		h.WaitPlugin(t)
	}
}

// Boot stops the daemon and starts it again on the same data in ns, a
// fresh namespace: what a reboot is to Docker and the plugin (no links, no
// routes, no firewall tables, not even loaded ones). Docker starts the
// enabled plugin again before it makes its own chains.
func (h *Host) Boot(t testing.TB, ns testkit.NS) {
	t.Helper()
	h.halt()
	h.NS = ns
	h.launch(t)
	h.WaitPlugin(t)
}

// halt stops the daemon: SIGTERM, and SIGKILL if it is not gone in 45 s.
func (h *Host) halt() {
	_ = h.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-h.done:
	case <-time.After(45 * time.Second):
		_ = h.cmd.Process.Kill()
		<-h.done
	}
	h.forget()
}

func (h *Host) stop(t testing.TB) {
	if t.Failed() {
		t.Logf("dockerd log of %s, errors and warnings (first 40):\n%s", h.Name, h.Problems(40))
		t.Logf("dockerd log of %s (last lines):\n%s", h.Name, h.LogTail(60))
	}
	// Containers first, so that the daemon's shutdown is quick.
	if ids, err := h.Docker("ps", "-aq"); err == nil && ids != "" {
		_, _ = h.Docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	h.halt()
	testkit.KillShims(h.ExecRoot)
	testkit.UnmountUnder(h.Dir)
	testkit.UnmountUnder(h.ExecRoot)
	testkit.CleanDir(h.Dir)
	testkit.CleanDir(h.ExecRoot)
}

// LogTail returns the last n lines of the daemon's log.
func (h *Host) LogTail(n int) string {
	b, _ := os.ReadFile(h.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Problems returns the first n error and warning lines of the daemon's log
// (the plugin's included).
func (h *Host) Problems(n int) string {
	b, _ := os.ReadFile(h.log)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if len(out) < n && (strings.Contains(l, "level=error") || strings.Contains(l, "level=warn")) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// PluginLog returns the plugin's lines from the daemon's log.
func (h *Host) PluginLog() string {
	b, _ := os.ReadFile(h.log)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "plugin=") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Env is the environment for docker commands against this host.
func (h *Host) Env() []string { return append(os.Environ(), "DOCKER_HOST=unix://"+h.Socket) }

// Docker runs the docker CLI against this host.
func (h *Host) Docker(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = h.Env()
	out, err := cmd.CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

// MustDocker is Docker that fails the test on error.
func (h *Host) MustDocker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := h.Docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Make runs a target of the project's Makefile against this host.
func (h *Host) Make(t testing.TB, args ...string) string {
	t.Helper()
	cmd := exec.Command("make", append([]string{"-C", RepoRoot(t)}, args...)...)
	cmd.Env = h.Env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// treeBuild is the tree's plugin, built once per test run.
var treeBuild struct {
	sync.Mutex
	dir    string
	forget func()
}

// TreeBuild is the folder the tree's plugin is built in (make plugin-dir),
// once per test run: its tartan binary and its plugin folder, which every
// test host installs. A run stopped half way leaves it to the next run's
// sweep.
func TreeBuild(t testing.TB) string {
	t.Helper()
	treeBuild.Lock()
	defer treeBuild.Unlock()
	if treeBuild.dir != "" {
		return treeBuild.dir
	}
	dir, err := os.MkdirTemp("", "tartan-e2e-build-")
	if err != nil {
		t.Fatal(err)
	}
	forget := testkit.RecordDir(dir)
	cmd := exec.Command("make", "-C", RepoRoot(t), "plugin-dir", "BUILD="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		forget()
		t.Fatalf("make plugin-dir: %v\n%s", err, out)
	}
	treeBuild.dir, treeBuild.forget = dir, forget
	return dir
}

// RemoveTreeBuild removes the tree's build, once the tests are done.
func RemoveTreeBuild() {
	treeBuild.Lock()
	defer treeBuild.Unlock()
	if treeBuild.dir != "" {
		_ = os.RemoveAll(treeBuild.dir)
		treeBuild.forget()
		treeBuild.dir = ""
	}
}

// InstallPlugin installs the tree's plugin the way a user does (make
// install: docker plugin create from the folder make plugin built, built
// once per run with TreeBuild), with settings applied before it is
// enabled. The plugin's docker mount points at this host's daemon socket
// (a real host's is /var/run/docker.sock, the default).
func (h *Host) InstallPlugin(t testing.TB, settings ...string) {
	t.Helper()
	args := []string{"install", "BUILD=" + TreeBuild(t),
		"SETTINGS=" + strings.Join(append(h.Mounts(t), settings...), " ")}
	h.Make(t, args...)
	h.WaitPlugin(t)
}

// DockerMount is the plugin setting that mounts this host's Docker socket.
func (h *Host) DockerMount() string { return "docker.source=" + h.Socket }

// StateDir is this test host's stand-in for the host's /var/lib, where the
// plugin keeps its state across reinstalls (test hosts share one
// filesystem; a real host's is /var/lib, the default).
func (h *Host) StateDir() string { return filepath.Join(h.Dir, "varlib") }

// Mounts are the plugin settings that give the plugin this host's Docker
// socket, state folder and /run (for the xtables lock).
func (h *Host) Mounts(t testing.TB) []string {
	t.Helper()
	if err := os.MkdirAll(h.StateDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(h.RunDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	return []string{h.DockerMount(), "state.source=" + h.StateDir(), "xtables.source=" + h.RunDir()}
}

// RunDir stands for this host's /run where the xtables lock lives: its
// daemon's iptables and its plugin's take the lock there (XTABLES_LOCKFILE),
// as on a machine of its own.
func (h *Host) RunDir() string { return filepath.Join(h.Dir, "run") }

// WaitPlugin waits until the plugin answers on its socket.
func (h *Host) WaitPlugin(t testing.TB) {
	t.Helper()
	h.WaitPluginNamed(t, PluginName)
}

// WaitPluginNamed waits until the plugin installed as name (a registry
// reference) answers on its socket.
func (h *Host) WaitPluginNamed(t testing.TB, name string) {
	t.Helper()
	Eventually(t, 30*time.Second, "plugin "+name+" serving on "+h.Name, func() error {
		_, err := h.pluginCall(name, "/Plugin.Activate", "{}")
		return err
	})
}

// PluginID is the full ID of the installed plugin.
func (h *Host) PluginID(t testing.TB) string {
	t.Helper()
	return h.MustDocker(t, "plugin", "inspect", "-f", "{{.Id}}", PluginName)
}

// PluginName is how tests name the plugin.
const PluginName = "tartan:latest"

// Tartan runs the operator's CLI (the tartan binary the host's plugin was
// built with, make plugin) against the host's plugin, and returns its
// standard output; it fails the test unless the command succeeds.
func (h *Host) Tartan(t testing.TB, args ...string) string {
	t.Helper()
	out, rc, stderr := h.TartanRC(t, args...)
	if rc != 0 {
		t.Fatalf("tartan %s on %s: exit status %d\n%s%s", strings.Join(args, " "), h.Name, rc, out, stderr)
	}
	return out
}

// TartanRC is Tartan that returns the exit status and standard error.
func (h *Host) TartanRC(t testing.TB, args ...string) (stdout string, rc int, stderr string) {
	t.Helper()
	sock := pluginSocket(h.PluginID(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(TreeBuild(t), "tartan"), append(args, "--socket", sock)...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		rc = exit.ExitCode()
	default:
		t.Fatalf("tartan %s on %s: %v", strings.Join(args, " "), h.Name, err)
	}
	return string(out), rc, errb.String()
}

// PluginCall posts a raw body to the plugin's socket and returns the answer
// (with the HTTP status on the first line).
func (h *Host) PluginCall(path, body string) (string, error) {
	return h.pluginCall(PluginName, path, body)
}

func (h *Host) pluginCall(name, path, body string) (string, error) {
	ids, err := h.Docker("plugin", "inspect", "-f", "{{.Id}}", name)
	if err != nil {
		return "", err
	}
	sock := pluginSocket(ids)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return testkit.Run(ctx, "curl", "-sS", "--unix-socket", sock, "-w", "\n%{http_code}", "-X", "POST", "-d", body, "http://plugin"+path)
}

var imageOnce sync.Mutex

// Image imports the busybox test image ("tbox") into the host's daemon.
func (h *Host) Image(t testing.TB) string {
	t.Helper()
	imageOnce.Lock()
	defer imageOnce.Unlock()
	tar := BusyboxTar(t)
	cmd := exec.Command("docker", "import", tar, "tbox")
	cmd.Env = h.Env()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("import test image: %v: %s", err, out)
	}
	return "tbox"
}

// BusyboxTar builds (once per process) a tar of a root filesystem holding
// Debian's static busybox and its applets.
func BusyboxTar(t testing.TB) string {
	t.Helper()
	tar := filepath.Join(os.TempDir(), "tartan-e2e-busybox.tar")
	if _, err := os.Stat(tar); err == nil {
		return tar
	}
	bb, err := exec.LookPath("busybox")
	testkit.Require(t, err == nil, "busybox is not installed (apt-get install busybox-static)")
	dir, err := os.MkdirTemp("", "tbox")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev"} {
		_ = os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	testkit.MustRun(t, "cp", bb, filepath.Join(dir, "bin/busybox"))
	for _, a := range []string{"sh", "ip", "ping", "nc", "sleep", "cat", "echo", "ls", "wc", "head", "dd", "seq",
		"timeout", "hostname", "nslookup", "wget", "httpd", "kill", "sync", "md5sum", "true", "grep", "awk", "sed", "ifconfig", "route", "arp", "tr", "date", "sort", "uniq"} {
		_ = os.Symlink("busybox", filepath.Join(dir, "bin", a))
	}
	tmp := tar + ".tmp"
	testkit.MustRun(t, "tar", "-C", dir, "-cf", tmp, ".")
	if err := os.Rename(tmp, tar); err != nil {
		t.Fatal(err)
	}
	return tar
}

// PluginPIDs finds the tartan processes running in this host's namespace.
func (h *Host) PluginPIDs(t testing.TB) []int {
	t.Helper()
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", h.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.HasPrefix(string(cmdline), "/tartan\x00") && string(cmdline) != "/tartan" {
			continue
		}
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); ns == want {
			pids = append(pids, pid)
		}
	}
	return pids
}

// KillPlugin kills the plugin process with SIGKILL and waits until Docker
// has restarted it and it answers.
func (h *Host) KillPlugin(t testing.TB) {
	t.Helper()
	pids := h.PluginPIDs(t)
	if len(pids) != 1 {
		t.Fatalf("want one plugin process on %s, found %v", h.Name, pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 60*time.Second, "Docker restarts the killed plugin on "+h.Name, func() error {
		if p := h.PluginPIDs(t); len(p) != 1 || p[0] == pids[0] {
			return fmt.Errorf("plugin processes %v", p)
		}
		_, err := h.PluginCall("/Plugin.Activate", "{}")
		return err
	})
}

// pluginSocket is the plugin's socket: Docker puts plugin sockets there
// whatever its --exec-root.
func pluginSocket(id string) string { return filepath.Join("/run/docker/plugins", id, "tartan.sock") }
