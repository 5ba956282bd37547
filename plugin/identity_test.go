package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/kv"
)

func testIdentity(store kv.Store, address, boot string) *Identity {
	log := logrus.New()
	log.SetOutput(io.Discard)
	id := NewIdentity(store, "h1", address, boot, log)
	id.ttl = 50 * time.Millisecond
	return id
}

func readyWithin(t *testing.T, id *Identity) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return id.Ready(ctx)
}

// Audit H3 (issue 24): a machine whose state folder is a copy of a live
// one's (same host ID, another boot and address) refuses, naming the copy
// and the fix; the first machine keeps its identity.
func TestIdentityRefusesACopy(t *testing.T) {
	store := kv.NewMemory()
	first, copied := testIdentity(store, "10.98.0.11", "boot-1"), testIdentity(store, "10.98.0.12", "boot-2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go first.Run(ctx)
	if err := readyWithin(t, first); err != nil {
		t.Fatal(err)
	}
	go copied.Run(ctx)
	err := readyWithin(t, copied)
	if err == nil {
		t.Fatal("the copy got the host ID of a live machine")
	}
	for _, want := range []string{"host ID h1 is in use by another machine (address 10.98.0.11", "state folder", "copy", "rm -r /var/lib/tartan"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("the refusal does not say %q: %v", want, err)
		}
	}
	if copied.Refused() == nil || first.Refused() != nil {
		t.Fatalf("refused: first %v, copy %v", first.Refused(), copied.Refused())
	}
	if err := readyWithin(t, first); err != nil {
		t.Fatalf("the first machine lost its identity to the copy: %v", err)
	}
}

// A plugin process that died holding the claim (its session not lapsed yet)
// is taken over at once by the next process of the same machine: same boot
// (a crash, an upgrade), or the same address (a reboot).
func TestIdentityTakesOverItsOwnMachine(t *testing.T) {
	for _, c := range []struct{ name, address, boot string }{
		{"same boot", "10.98.0.99", "boot-1"},
		{"same address after a reboot", "10.98.0.11", "boot-2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := kv.NewMemory()
			dead, _ := json.Marshal(IdentityRecord{Instance: "dead", Boot: "boot-1", Address: "10.98.0.11"})
			if held, _, _, err := store.Claim(context.Background(), IdentityPath("h1"), dead, time.Hour); err != nil || !held {
				t.Fatalf("the dead process's claim: %v %v", held, err)
			}
			next := testIdentity(store, c.address, c.boot)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go next.Run(ctx)
			if err := readyWithin(t, next); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A claim nobody renews (another machine that stopped, or this one before
// a restart under another address) lapses, and is taken then.
func TestIdentityWaitsOutALapsingClaim(t *testing.T) {
	store := kv.NewMemory()
	other, _ := json.Marshal(IdentityRecord{Instance: "old", Boot: "boot-0", Address: "10.98.0.50"})
	octx, ocancel := context.WithCancel(context.Background())
	if held, _, _, err := store.Claim(octx, IdentityPath("h1"), other, time.Hour); err != nil || !held {
		t.Fatalf("the old claim: %v %v", held, err)
	}
	id := testIdentity(store, "10.98.0.11", "boot-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go id.Run(ctx)
	time.Sleep(2 * id.ttl)
	ocancel() // it lapses
	if err := readyWithin(t, id); err != nil {
		t.Fatalf("after the old claim lapsed: %v", err)
	}
}

// The embedded store is one host's: its identity is held from the start.
func TestIdentityWithoutClaims(t *testing.T) {
	store, err := kv.OpenBolt(t.TempDir() + "/t.db")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := readyWithin(t, testIdentity(store, "", "")); err != nil {
		t.Fatal(err)
	}
}

// flakyClaims refuses a claim a few times with nobody holding it (Consul's
// lock delay after a session ended), then grants it.
type flakyClaims struct {
	kv.Store
	refusals int
}

func (f *flakyClaims) Claim(ctx context.Context, key string, value []byte, ttl time.Duration) (bool, []byte, <-chan struct{}, error) {
	if f.refusals > 0 {
		f.refusals--
		return false, nil, nil, nil
	}
	return true, nil, make(chan struct{}), nil
}

func (f *flakyClaims) Break(context.Context, string) error { return nil }

// A claim refused with nobody holding it (the lock delay after this
// machine's previous process ended) is tried again; it is no other
// machine's (the plugin refused itself after every restart on Consul).
func TestIdentityRetriesAFreeKey(t *testing.T) {
	id := testIdentity(&flakyClaims{Store: kv.NewMemory(), refusals: 3}, "10.98.0.11", "boot-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go id.Run(ctx)
	if err := readyWithin(t, id); err != nil {
		t.Fatal(err)
	}
}

// downClaims is a store that cannot be reached.
type downClaims struct{ kv.Store }

func (downClaims) Claim(context.Context, string, []byte, time.Duration) (bool, []byte, <-chan struct{}, error) {
	return false, nil, nil, fmt.Errorf("consul at http://127.0.0.1:9: %w", kv.ErrUnavailable)
}

func (downClaims) Break(context.Context, string) error { return nil }

// A request that waits for the claim while the store cannot be reached
// fails naming the store and what went wrong with it, not only the claim:
// the store's address is what the operator fixes.
func TestIdentityNotReadyNamesTheStore(t *testing.T) {
	id := testIdentity(downClaims{kv.NewMemory()}, "10.98.0.11", "boot-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go id.Run(ctx)
	done, stop := context.WithCancel(context.Background())
	stop()
	var err error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err = id.Ready(done); err != nil && strings.Contains(err.Error(), "consul at http://127.0.0.1:9") {
			break
		}
	}
	if err == nil || !strings.Contains(err.Error(), "consul at http://127.0.0.1:9") || !errors.Is(err, kv.ErrUnavailable) || !strings.Contains(err.Error(), "identity/h1") {
		t.Fatalf("Ready with the store down = %v, want the claim and the store named, wrapping kv.ErrUnavailable", err)
	}
}

// deniedClaims is a store whose token may not write sessions.
type deniedClaims struct{ kv.Store }

func (deniedClaims) Claim(context.Context, string, []byte, time.Duration) (bool, []byte, <-chan struct{}, error) {
	return false, nil, nil, fmt.Errorf("claim: %w", kv.ErrDenied)
}

func (deniedClaims) Break(context.Context, string) error { return nil }

// A Consul token without session write (one from before the identity
// claim) serves as before, unchecked, rather than refusing.
func TestIdentityWithATokenThatMayNotClaim(t *testing.T) {
	id := testIdentity(deniedClaims{kv.NewMemory()}, "10.98.0.11", "boot-1")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go id.Run(ctx)
	if err := readyWithin(t, id); err != nil {
		t.Fatal(err)
	}
}

// Issue 24, audit L9: one plugin per host, also for a second plugin given
// another state folder: the host's /run holds a lock of its own.
func TestHostLock(t *testing.T) {
	dir := t.TempDir()
	env := func(k string) string {
		if k == "XTABLES_LOCKFILE" {
			return dir + "/xtables.lock"
		}
		return ""
	}
	first, err := hostLock(env)
	if err != nil || first == nil {
		t.Fatalf("first plugin: %v %v", first, err)
	}
	if second, err := hostLock(env); err != nil || second != nil {
		t.Fatalf("second plugin got the host lock: %v %v", second, err)
	}
	first.Close()
	third, err := hostLock(env)
	if err != nil || third == nil {
		t.Fatalf("after the first plugin stopped: %v %v", third, err)
	}
	third.Close()
	if got, err := hostLock(func(string) string { return "" }); got != nil || err != nil {
		t.Fatalf("without the host's /run: %v %v", got, err)
	}
}
