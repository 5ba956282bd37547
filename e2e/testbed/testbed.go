// Package testbed builds real test environments for tartan: network
// namespaces acting as hosts, a dockerd per host, Consul servers, a local
// registry and the test image. Everything it makes is torn down by
// t.Cleanup, also when the test fails. It never sends traffic outside the
// namespaces it made (or loopback).
package testbed

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// MinWait is the shortest a test waits for a condition before it fails:
// a deadline is for a condition that never comes, not for one that comes
// late on a slower or busier machine (how fast it came is a benchmark's
// figure, make bench).
const MinWait = 2 * time.Minute

// Eventually polls fn until it returns nil, and fails the test only when it
// has not after timeout or MinWait, whichever is longer.
func Eventually(t testing.TB, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	timeout = max(timeout, MinWait)
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
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

// RepoRoot finds the repository (the folder with go.mod) above the test.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test")
		}
		dir = parent
	}
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
