// Package testkit is what tartan's tests share, the unit tests and the e2e
// harness (e2e/testbed) alike: skipping or failing by need (Require), running
// a test binary in a network namespace of its own, namespaces and a real
// Consul server for a test, and the records by which whatever a run made is
// found and removed when the run is killed. It never sends traffic outside
// the namespaces it made (or loopback).
package testkit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Require fails in CI and skips loudly elsewhere when a need is not met: a
// test that cannot run where it must is a failure, not a silent pass.
func Require(t testing.TB, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("CI cannot run this test: %s", why)
	}
	t.Skipf("SKIPPED (not in CI): %s", why)
}

// RequireRoot needs root and the commands named.
func RequireRoot(t testing.TB, cmds ...string) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "needs root (network namespaces, dockerd)")
	for _, c := range cmds {
		_, err := exec.LookPath(c)
		Require(t, err == nil, c+" is not installed (run make deps)")
	}
}

// Run runs a command and returns its combined output.
func Run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	s := strings.TrimSpace(out.String())
	if err != nil {
		return s, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, s)
	}
	return s, nil
}

// MustRun runs a command and fails the test on error.
func MustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := Run(ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Sh runs a shell command line and returns its combined output, failing
// the test on error.
func Sh(t testing.TB, cmd string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return string(out)
}

// Self is the command that runs this test binary again: itself, or under
// the emulator TARTAN_TEST_EMULATOR names (make check-arm64 runs the arm64
// tests under qemu-aarch64-static, which the kernel does not know to use by
// itself).
func Self(args ...string) []string {
	if emu := os.Getenv("TARTAN_TEST_EMULATOR"); emu != "" {
		return append([]string{emu, os.Args[0]}, args...)
	}
	return append([]string{os.Args[0]}, args...)
}

// MainInOwnNetns runs a package's tests again in a network namespace of
// their own when root (they write real links, routes and rules), with env
// set to 1 there; elsewhere it runs them as they are (tests that need the
// namespace check env and say why they skip). Either way as Main does:
// nothing outlives the run.
func MainInOwnNetns(m *testing.M, env string) int {
	return guard(func() int {
		if os.Getenv(env) == "" && os.Geteuid() == 0 {
			if _, err := exec.LookPath("unshare"); err == nil {
				cmd := exec.Command("unshare", append([]string{"--net", "--"}, Self(os.Args[1:]...)...)...)
				cmd.Env = append(os.Environ(), env+"=1")
				cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
				if err := cmd.Run(); err != nil {
					if ee, ok := err.(*exec.ExitError); ok {
						return ee.ExitCode()
					}
					fmt.Fprintln(os.Stderr, err)
					return 1
				}
				return 0
			}
		}
		return m.Run()
	})
}

func splitLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// PeakRSS is a process's peak resident memory as /proc says it (VmHWM,
// "123456 kB"), or "unknown"; pid 0 is the calling process.
func PeakRSS(pid int) string {
	path := "/proc/self/status"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "unknown"
}
