package kv_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
)

// lostAnswer commits the first create under vnis/ and answers ErrConflict:
// what Consul's client says when a committed write's answer was lost and
// the write was tried again on the next server.
type lostAnswer struct {
	kv.Store
	lost bool
}

func (l *lostAnswer) Put(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	v, err := l.Store.Put(ctx, key, value, version)
	if err == nil && version == 0 && !l.lost && strings.HasPrefix(key, kv.VNIsPrefix) {
		l.lost = true
		return 0, kv.ErrConflict
	}
	return v, err
}

// A claim whose answer was lost is this network's, not
// another's (before the fix the next VNI was claimed and the first leaked);
// a network's existing claim is reused; automatic VNIs start above
// flannel's default VNI 1.
func TestClaimVNI(t *testing.T) {
	ctx := context.Background()
	for _, st := range kvtest.Stores(consulAddr) {
		t.Run(st.Name, func(t *testing.T) {
			s := st.Make(t)
			vni, created, err := kv.ClaimVNI(ctx, &lostAnswer{Store: s}, 0, "10.1.0.0/16")
			if err != nil || vni != kv.FirstAutoVNI || !created {
				t.Fatalf("claim with a lost answer: %d %v %v, want %d created", vni, created, err, kv.FirstAutoVNI)
			}
			if ps, _, err := s.List(ctx, kv.VNIsPrefix); err != nil || len(ps) != 1 {
				t.Fatalf("claims after a lost answer: %v %v, want one", ps, err)
			}
			again, created, err := kv.ClaimVNI(ctx, s, 0, "10.1.0.0/16")
			if err != nil || again != vni || created {
				t.Fatalf("the network's claim again: %d %v %v, want %d not created", again, created, err, vni)
			}
			other, created, err := kv.ClaimVNI(ctx, s, 0, "10.2.0.0/16")
			if err != nil || other != kv.FirstAutoVNI+1 || !created {
				t.Fatalf("another network: %d %v %v", other, created, err)
			}
			if _, _, err := kv.ClaimVNI(ctx, s, other, "10.3.0.0/16"); err == nil || !strings.Contains(err.Error(), "10.2.0.0/16") {
				t.Fatalf("an explicit VNI another network has: %v", err)
			}
			if v, created, err := kv.ClaimVNI(ctx, s, 1, "10.3.0.0/16"); err != nil || v != 1 || !created {
				t.Fatalf("an explicit low VNI: %d %v %v", v, created, err)
			}
		})
	}
}

// Issue 10: a Consul blocking query on a prefix that holds no key answers
// with the index of the whole store, so it wakes on every write anywhere
// (every tartan watch of an empty prefix on every host did); with the
// marker KeepFolder writes it sleeps until something under it changes.
// Measured against the real Consul server: five writes elsewhere.
func TestKeepFolderQuietsWatches(t *testing.T) {
	s := consulStore(t)
	ctx := context.Background()
	wakes := func(prefix string) int {
		t.Helper()
		_, index, err := s.List(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; i < 5; i++ {
				time.Sleep(100 * time.Millisecond)
				if _, err := s.Put(ctx, fmt.Sprintf("elsewhere/%s-%d", strings.TrimSuffix(prefix, "/"), i), []byte("x"), 0); err != nil {
					t.Error(err)
				}
			}
		}()
		wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		defer cancel()
		n := 0
		for {
			_, next, err := s.Watch(wctx, prefix, index)
			if err != nil || wctx.Err() != nil {
				break
			}
			if next != index {
				n++
				index = next
			}
		}
		<-done
		return n
	}
	empty := wakes("empty/")
	if err := kv.KeepFolder(ctx, s, "marked/"); err != nil {
		t.Fatal(err)
	}
	if err := kv.KeepFolder(ctx, s, "marked/"); err != nil {
		t.Fatalf("a second KeepFolder: %v", err)
	}
	marked := wakes("marked/")
	t.Logf("five writes elsewhere woke a watch of an empty prefix %d times, of a marked one %d times", empty, marked)
	if marked != 0 {
		t.Fatalf("the marked prefix's watch woke %d times on writes elsewhere", marked)
	}
	if empty == 0 {
		t.Fatal("the empty prefix's watch never woke: Consul no longer behaves as this marker assumes")
	}
	var got []string
	if _, err := kv.ListJSON(ctx, s, "marked/", func(k string, _ uint64, _ json.RawMessage) error { got = append(got, k); return nil }, nil); err != nil || len(got) != 0 {
		t.Fatalf("ListJSON lists the marker: %v %v", got, err)
	}
	if err := kv.KeepFolder(ctx, s, "no-slash"); err == nil {
		t.Fatal("a folder without a trailing / was accepted")
	}
}
