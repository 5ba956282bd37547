package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestMain: with TESTBED_CHILD set this binary is a test run that makes a
// namespace with a process in it and a process of its own, then hangs (as a
// suite stuck until go test's -timeout does); the tests below stop it in
// the ways a run ends early and check that nothing it made is left.
func TestMain(m *testing.M) {
	if os.Getenv("TESTBED_CHILD") != "" {
		os.Exit(guard(func() int {
			ns := nsPrefix() + "leak"
			RecordNS(ns)
			_ = exec.Command("ip", "netns", "add", ns).Run()
			in := exec.Command("nsenter", "--net=/run/netns/"+ns, "sleep", "600")
			out := exec.Command("sleep", "601")
			for _, c := range []*exec.Cmd{in, out} {
				if err := c.Start(); err != nil {
					fmt.Fprintln(os.Stderr, err)
					return 3
				}
			}
			RecordProcess(out.Process.Pid, "sleep")
			// Ready once nsenter has become sleep inside the namespace: a
			// process caught in its exec has no command line to check.
			for start := time.Now(); time.Since(start) < 2*time.Minute; time.Sleep(10 * time.Millisecond) {
				if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", in.Process.Pid)); err == nil && strings.HasPrefix(string(b), "sleep\x00") {
					break
				}
			}
			fmt.Println("ready", in.Process.Pid, out.Process.Pid)
			select {}
		}))
	}
	os.Exit(m.Run())
}

// child starts the hanging run with its own namespace prefix (its own
// group), waits until it has made everything, and returns the pids of the
// processes it started; whatever happens, the child's group is swept at
// the end of the test.
func child(t *testing.T, prefix string, args ...string) (*exec.Cmd, []int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "TESTBED_CHILD=1", "TARTAN_E2E_PREFIX="+prefix)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		Sweep(childGroup(prefix), t.Logf)
	})
	var word string
	pids := make([]int, 2)
	if n, err := fmt.Fscan(out, &word, &pids[0], &pids[1]); err != nil || n != 3 || word != "ready" {
		t.Fatalf("the child run did not get ready: %q %v %v", word, pids, err)
	}
	return cmd, pids
}

// childGroup is the run group of a child run with prefix.
func childGroup(prefix string) string {
	return filepath.Base(os.Args[0]) + "." + strings.TrimSuffix(prefix, "-")
}

// leftovers says what of a child run with prefix (and its processes) is
// still there.
func leftovers(prefix string, pids []int) []string {
	var left []string
	if _, err := os.Stat("/run/netns/" + prefix + "leak"); err == nil {
		left = append(left, "namespace "+prefix+"leak")
	}
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && strings.HasPrefix(string(b), "sleep\x00") && !zombie(pid) {
			left = append(left, fmt.Sprintf("process %d (%s)", pid, strings.ReplaceAll(string(b), "\x00", " ")))
		}
	}
	return left
}

func requireRootNS(t *testing.T) {
	t.Helper()
	RequireRoot(t, "ip", "sleep")
}

// A run killed outright (SIGKILL: no handler runs) leaves everything; the
// next run of its group removes it first thing.
func TestSweepAfterKill(t *testing.T) {
	requireRootNS(t)
	cmd, pids := child(t, "tq1-")
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if left := leftovers("tq1-", pids); len(left) != 3 {
		t.Fatalf("the killed run left %v, want its namespace and both processes", left)
	}
	Sweep(childGroup("tq1-"), t.Logf)
	if left := leftovers("tq1-", pids); len(left) != 0 {
		t.Fatalf("after the sweep: %v", left)
	}
}

// A run that gets SIGTERM (make test killed, CI stopping) removes what it
// made before it exits.
func TestSweepOnSignal(t *testing.T) {
	requireRootNS(t)
	cmd, pids := child(t, "tq2-")
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err == nil {
		t.Fatal("the stopped run exited 0")
	}
	if left := leftovers("tq2-", pids); len(left) != 0 {
		t.Fatalf("after SIGTERM the run left %v", left)
	}
}

// A run that reaches its own -timeout removes what it made before go test's
// panic would (which runs no cleanup).
func TestSweepAtDeadline(t *testing.T) {
	requireRootNS(t)
	cmd, pids := child(t, "tq3-", "-test.timeout=10s")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the run that ran out of time exited 0")
		}
	case <-time.After(5 * time.Minute):
		_ = cmd.Process.Kill()
		t.Fatal("the run did not stop at its deadline")
	}
	if left := leftovers("tq3-", pids); len(left) != 0 {
		t.Fatalf("after its deadline the run left %v", left)
	}
}

// A run that still goes, its go test alive, is not another run's leftover:
// a run of the same group started beside it (a developer's go test while
// make test runs) leaves it alone; once it is over, it is swept.
func TestSweepSparesARunningRun(t *testing.T) {
	requireRootNS(t)
	cmd, pids := child(t, "tq4-")
	Sweep(childGroup("tq4-"), t.Logf)
	if left := leftovers("tq4-", pids); len(left) != 3 {
		t.Fatalf("a sweep beside a running run took %v of it", left)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	Sweep(childGroup("tq4-"), t.Logf)
	if left := leftovers("tq4-", pids); len(left) != 0 {
		t.Fatalf("after the run ended: %v", left)
	}
}
