// Package testbed builds real test environments for tartan: network
// namespaces acting as hosts, a dockerd per host, Consul servers, a local
// registry and the test image, on internal/testkit's namespaces, Consul
// servers and run records. Everything it makes is torn down by t.Cleanup,
// also when the test fails. It never sends traffic outside the namespaces
// it made (or loopback).
package testbed

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// MinWait is the shortest a test waits for a condition before it fails:
// a deadline is for a condition that never comes, not for one that comes
// late on a slower or busier machine (how fast it came is a benchmark's
// figure, make bench).
const MinWait = 2 * time.Minute

// Eventually polls fn until it returns nil, and fails the test only when it
// has not after timeout or MinWait, whichever is longer. It polls at once,
// then less and less often (from every 200 ms to every second): a poll
// often runs docker exec, which costs a 2-core machine more than the wait
// it shortens, and the suite runs several tests side by side.
func Eventually(t testing.TB, timeout time.Duration, what string, fn func() error) {
	t.Helper()
	timeout = max(timeout, MinWait)
	deadline := time.Now().Add(timeout)
	pause := 200 * time.Millisecond
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(pause)
		pause = min(pause*3/2, time.Second)
	}
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
