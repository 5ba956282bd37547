package testkit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// What a test run makes (processes, namespaces, a dockerd's folders) is
// recorded under RecordRoot before it is made, in a folder of the run's own
// inside its group's (RecordRoot/<group>/<run>), so that whatever outlives
// its run (a go test -timeout panic skips every cleanup; a killed make test
// leaves its test binaries running) is found by its records and removed: by
// the next run of the same group first thing (the runs of its group that
// are over, or whose go test is gone: never one that still runs beside it),
// by make clean-testbed for every run, and by the run itself when it is
// stopped (a signal, its parent gone, its own deadline just before go
// test's). Nothing that was not recorded is touched.
const RecordRoot = "/run/tartan-testbed"

// record is one thing a run made.
type record struct {
	Kind  string `json:"kind"` // runner, process, netns, dockerd, dir
	PID   int    `json:"pid,omitempty"`
	Start uint64 `json:"start,omitempty"` // the process's start time in clock ticks after boot: a reused pid has another
	Name  string `json:"name,omitempty"`  // a namespace's name; a process's command, for the log
	// A runner's parent (go test), by pid and start time: a runner whose
	// parent is gone is a leftover even while it runs.
	Parent      int    `json:"parent,omitempty"`
	ParentStart uint64 `json:"parentStart,omitempty"`
	// A dockerd's socket, exec-root and data folder.
	Socket   string `json:"socket,omitempty"`
	ExecRoot string `json:"execRoot,omitempty"`
	Dir      string `json:"dir,omitempty"`
}

// Group is this test binary's run group: the binary's name, and for the
// e2e binaries the namespace prefix of their run (TARTAN_E2E_PREFIX), so that
// the engine runs make test starts side by side never sweep each other.
func Group() string {
	return filepath.Base(os.Args[0]) + "." + strings.TrimSuffix(nsPrefix(), "-")
}

// nsPrefix is what this run's namespace names start with.
func nsPrefix() string {
	if p := os.Getenv("TARTAN_E2E_PREFIX"); p != "" {
		return p
	}
	return "tt-"
}

// runDir is this process's run folder: its group's, then its pid and
// start time.
func runDir() string {
	me := os.Getpid()
	return filepath.Join(RecordRoot, Group(), fmt.Sprintf("%d-%d", me, startTime(me)))
}

// save writes r into this run's folder; forget removes it again (once what
// it names is gone).
func save(r record) (forget func()) {
	dir := runDir()
	id := r.Kind + "-"
	switch {
	case r.Name != "" && r.Kind == "netns":
		id += r.Name
	case r.PID != 0:
		id += strconv.Itoa(r.PID)
	default:
		id += strings.ReplaceAll(strings.Trim(r.Dir, "/"), "/", "_")
	}
	b, _ := json.Marshal(r)
	path := filepath.Join(dir, id)
	if err := os.MkdirAll(dir, 0o755); err == nil {
		_ = os.WriteFile(path+".tmp", b, 0o644)
		_ = os.Rename(path+".tmp", path)
	}
	return func() { _ = os.Remove(path) }
}

// RecordProcess records a process this run started; forget once it has
// been waited for.
func RecordProcess(pid int, what string) (forget func()) {
	return save(record{Kind: "process", PID: pid, Start: startTime(pid), Name: what})
}

// RecordDir records a folder to remove (after unmounting what is mounted
// below it).
func RecordDir(dir string) (forget func()) { return save(record{Kind: "dir", Dir: dir}) }

// RecordNS records a network namespace (by name, under /run/netns) before
// it is made; what runs inside it is stopped with it.
func RecordNS(name string) (forget func()) { return save(record{Kind: "netns", Name: name}) }

// RecordDockerd records a test host's daemon (named name) with its socket,
// exec-root and data folder.
func RecordDockerd(pid int, name, socket, execRoot, dir string) (forget func()) {
	return save(record{Kind: "dockerd", PID: pid, Start: startTime(pid), Name: name, Socket: socket, ExecRoot: execRoot, Dir: dir})
}

// startTime is a process's start time (field 22 of /proc/<pid>/stat), 0 if
// it is gone.
func startTime(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// alive says whether the recorded process still runs (same pid, same start).
func (r record) alive() bool {
	return r.PID > 0 && r.Start != 0 && startTime(r.PID) == r.Start && !zombie(r.PID)
}

// Sweep removes what the runs of group left: every run that is over, or
// whose parent (go test) is gone, with what it made; a run that still runs
// beside this one (its go test alive) is left alone. logf says what it
// removed.
func Sweep(group string, logf func(format string, args ...any)) { sweepGroup(group, false, logf) }

// SweepAll removes what every run of every group left, runs still going
// included (make clean-testbed: no test run is meant to be going).
func SweepAll(logf func(format string, args ...any)) {
	entries, _ := os.ReadDir(RecordRoot)
	for _, e := range entries {
		if e.IsDir() {
			sweepGroup(e.Name(), true, logf)
		}
	}
}

func sweepGroup(group string, all bool, logf func(format string, args ...any)) {
	dir := filepath.Join(RecordRoot, group)
	runs, _ := os.ReadDir(dir)
	spare := ancestors()
	for _, run := range runs {
		path := filepath.Join(dir, run.Name())
		if !run.IsDir() {
			_ = os.Remove(path) // a record of a version without run folders
			continue
		}
		if path == runDir() {
			continue // this run's own: swept by its end (sweepRun)
		}
		sweepRun(path, all, spare, logf)
	}
	_ = os.Remove(dir) // when empty
}

// sweepRun removes what one run made, and its records: its test binary
// first (so that nothing makes more), then daemons with their containers,
// their containerd shims and mounts, recorded processes, every process
// inside a recorded namespace, folders, namespaces. A run that still goes
// with its parent alive is left alone unless all. It never stops the
// calling process or its ancestors.
func sweepRun(dir string, all bool, spare map[int]bool, logf func(format string, args ...any)) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	var recs []record
	var files []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		var r record
		if err != nil || json.Unmarshal(b, &r) != nil {
			_ = os.Remove(filepath.Join(dir, e.Name()))
			continue
		}
		if r.Kind == "runner" && r.alive() && !all && startTime(r.Parent) == r.ParentStart {
			return // a run going on beside this one
		}
		if r.Kind == "runner" && spare[r.PID] {
			continue // the run that started this one
		}
		recs = append(recs, r)
		files = append(files, filepath.Join(dir, e.Name()))
	}
	order := []string{"runner", "dockerd", "process", "netns", "dir"}
	slices.SortStableFunc(recs, func(a, b record) int { return slices.Index(order, a.Kind) - slices.Index(order, b.Kind) })
	for _, r := range recs {
		switch r.Kind {
		case "runner":
			if r.alive() {
				logf("stopping test binary %d of an earlier run (%s)", r.PID, r.Name)
				_ = syscall.Kill(r.PID, syscall.SIGKILL)
				waitGone(r, 10*time.Second)
			}
		case "dockerd":
			sweepDockerd(r, logf)
		case "process":
			if r.alive() && !spare[r.PID] {
				logf("stopping process %d (%s)", r.PID, r.Name)
				stopProcess(r)
			}
		case "netns":
			killInNetns(r.Name, spare, logf)
			if _, err := os.Stat("/run/netns/" + r.Name); err == nil {
				logf("removing network namespace %s", r.Name)
				_ = exec.Command("ip", "netns", "del", r.Name).Run()
			}
		case "dir":
			KillShims(r.Dir) // a daemon's exec-root: its shims outlive it
			if _, err := os.Stat(r.Dir); err == nil {
				logf("removing %s", r.Dir)
				CleanDir(r.Dir)
			}
		}
	}
	for _, f := range files {
		_ = os.Remove(f)
	}
	_ = os.Remove(dir) // when empty: the records of a spared runner may remain
}

// sweepDockerd stops a test host's daemon the way its cleanup does
// (containers first, then the daemon), then whatever it left: shims and
// their containers, mounts, folders.
func sweepDockerd(r record, logf func(string, ...any)) {
	if r.alive() {
		logf("stopping dockerd %d of %s", r.PID, r.Name)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		env := append(os.Environ(), "DOCKER_HOST=unix://"+r.Socket)
		ps := exec.CommandContext(ctx, "docker", "ps", "-aq")
		ps.Env = env
		if ids, err := ps.Output(); err == nil && len(bytes.TrimSpace(ids)) > 0 {
			rm := exec.CommandContext(ctx, "docker", append([]string{"rm", "-f"}, strings.Fields(string(ids))...)...)
			rm.Env = env
			_ = rm.Run()
		}
		cancel()
		stopProcess(r)
	}
	if r.ExecRoot != "" {
		KillShims(r.ExecRoot)
	}
	for _, d := range []string{r.Dir, r.ExecRoot} {
		if d != "" {
			CleanDir(d)
		}
	}
}

// stopProcess ends a recorded process: SIGCONT (a frozen one cannot stop),
// SIGTERM, and SIGKILL if it is not gone in 30 s.
func stopProcess(r record) {
	_ = syscall.Kill(r.PID, syscall.SIGCONT)
	_ = syscall.Kill(r.PID, syscall.SIGTERM)
	if !waitGone(r, 30*time.Second) {
		_ = syscall.Kill(r.PID, syscall.SIGKILL)
		waitGone(r, 10*time.Second)
	}
}

// waitGone waits until the process has exited (a zombie counts as gone).
func waitGone(r record, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if !r.alive() || zombie(r.PID) {
			return true
		}
	}
	return false
}

func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// killInNetns kills every process whose network namespace is the named one
// (a consul, a registry, a capture, a dockerd's containerd: only tests run
// anything there).
func killInNetns(name string, spare map[int]bool, logf func(string, ...any)) {
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+name, &st); err != nil {
		return
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	for _, pid := range pids() {
		if spare[pid] {
			continue
		}
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); ns == want {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			logf("killing %d (%s) in network namespace %s", pid, strings.TrimSpace(string(cmd)), name)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func pids() []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// ancestors are the calling process and the processes above it.
func ancestors() map[int]bool {
	out := map[int]bool{}
	for pid := os.Getpid(); pid > 1 && !out[pid]; pid = parent(pid) {
		out[pid] = true
	}
	return out
}

func parent(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// Main runs a package's tests so that nothing of them outlives the run:
// first it sweeps what an earlier run of its group left, then records
// itself; when it is stopped (SIGTERM, SIGINT, SIGHUP, its parent gone) or
// comes within a minute or two of its own -timeout (whose panic would skip
// every cleanup), it prints where every goroutine was, sweeps what it made
// and exits 1. After the tests it sweeps again and reports what a test left.
func Main(m *testing.M) int { return guard(m.Run) }

// MainThen is Main with after run once the tests are done, before the
// sweep that reports what a test left (what the whole run shares, such as
// one build of the plugin).
func MainThen(m *testing.M, after func()) int {
	return guard(func() int {
		defer after()
		return m.Run()
	})
}

// guard is Main around run.
func guard(run func() int) int {
	flag.Parse()
	if fuzzWorker() {
		return run() // a worker of go test -fuzz: its coordinator guards
	}
	group := Group()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "testbed: "+format+"\n", args...)
	}
	Sweep(group, logf)
	me, parent := os.Getpid(), os.Getppid()
	forget := save(record{Kind: "runner", PID: me, Start: startTime(me), Name: strings.Join(os.Args, " "), Parent: parent, ParentStart: startTime(parent)})
	own := func(logf func(string, ...any)) { sweepRun(runDir(), true, ancestors(), logf) }
	// A run stopped with its parent (go test) gone writes into a closed
	// pipe: that must not end it before it removed what it made.
	signal.Ignore(syscall.SIGPIPE)
	stopped := make(chan string, 1)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() { stopped <- "got " + (<-sigs).String() }()
	go func() {
		for ppid := os.Getppid(); ; time.Sleep(time.Second) {
			if os.Getppid() != ppid {
				stopped <- fmt.Sprintf("its parent %d is gone", ppid)
				return
			}
		}
	}()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			margin := min(2*time.Minute, d/10)
			time.AfterFunc(d-margin, func() {
				stopped <- fmt.Sprintf("reached its deadline: %s of its -timeout %s", d-margin, d)
			})
		}
	}
	go func() {
		why := <-stopped
		fmt.Fprintf(os.Stderr, "\ntestbed: the test run %s: where every goroutine was, then what it made is removed\n", why)
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
		own(logf)
		forget()
		os.Exit(1)
	}()
	rc := run()
	left := 0
	own(func(format string, args ...any) {
		left++
		logf("left by a test: "+format, args...)
	})
	forget()
	_ = os.Remove(runDir())
	_ = os.Remove(filepath.Join(RecordRoot, group))
	if left > 0 && rc == 0 {
		fmt.Fprintf(os.Stderr, "testbed: the tests passed but left %d things running or in place (above): a cleanup is missing\n", left)
		return 1
	}
	return rc
}

// fuzzWorker says whether this process is a worker that go test -fuzz
// started (its coordinator is the run).
func fuzzWorker() bool {
	f := flag.Lookup("test.fuzzworker")
	return f != nil && f.Value.String() == "true"
}

// CleanDir removes a folder, after unmounting whatever is mounted below it.
func CleanDir(dir string) {
	UnmountUnder(dir)
	_ = os.RemoveAll(dir)
}

// UnmountUnder lazily unmounts whatever a daemon left mounted below dir.
func UnmountUnder(dir string) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return
	}
	var mounts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 1 && strings.HasPrefix(fields[1], dir+"/") {
			mounts = append(mounts, fields[1])
		}
	}
	f.Close()
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = exec.Command("umount", "-l", mounts[i]).Run()
	}
}

// KillShims kills the containerd shims of a daemon that is gone (the
// plugin's among them: docker ps does not list it), found by the containerd
// address under its exec root; they outlive a killed daemon.
func KillShims(execRoot string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || !strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") ||
			!strings.Contains(string(b), "\x00-address\x00"+execRoot+"/") {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
