package kv_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
	bolt "go.etcd.io/bbolt"
)

// consulAddr is the Consul server TestMain started for the package ("" when
// there is no consul binary: the Consul runs then fail in CI, skip elsewhere).
var consulAddr string

func consulStore(t *testing.T) kv.Store { return kvtest.Consul(t, consulAddr) }

func TestConformance(t *testing.T) {
	for _, st := range kvtest.Stores(consulAddr) {
		mk := st.Make
		t.Run(st.Name, func(t *testing.T) {
			t.Run("CAS", func(t *testing.T) { testCAS(t, mk(t)) })
			t.Run("List", func(t *testing.T) { testList(t, mk(t)) })
			t.Run("Watch", func(t *testing.T) { testWatch(t, mk(t)) })
			t.Run("ConcurrentUpdates", func(t *testing.T) { testConcurrent(t, mk(t)) })
			t.Run("UpdateHelpers", func(t *testing.T) { testUpdate(t, mk(t)) })
			t.Run("Txn", func(t *testing.T) { testTxn(t, mk(t)) })
		})
	}
}

func testCAS(t *testing.T, s kv.Store) {
	ctx := context.Background()
	if _, err := s.Get(ctx, "a"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("get missing: want ErrNotFound, got %v", err)
	}
	v1, err := s.Put(ctx, "a", []byte("one"), 0)
	if err != nil || v1 == 0 {
		t.Fatalf("create: %d %v", v1, err)
	}
	if _, err := s.Put(ctx, "a", []byte("again"), 0); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("second create: want ErrConflict, got %v", err)
	}
	v2, err := s.Put(ctx, "a", []byte("two"), v1)
	if err != nil || v2 <= v1 {
		t.Fatalf("update: %d (after %d) %v", v2, v1, err)
	}
	if _, err := s.Put(ctx, "a", []byte("stale"), v1); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("stale update: want ErrConflict, got %v", err)
	}
	if vAny, err := s.Put(ctx, "any", []byte("x"), kv.Any); err != nil || vAny == 0 {
		t.Fatalf("write whatever the version (missing key): %d %v", vAny, err)
	}
	if vAny, err := s.Put(ctx, "any", []byte("y"), kv.Any); err != nil || vAny == 0 {
		t.Fatalf("write whatever the version (existing key): %d %v", vAny, err)
	}
	p, err := s.Get(ctx, "a")
	if err != nil || string(p.Value) != "two" || p.Version != v2 {
		t.Fatalf("get: %+v %v", p, err)
	}
	if err := s.Delete(ctx, "a", v1); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("stale delete: want ErrConflict, got %v", err)
	}
	if err := s.Delete(ctx, "a", v2); err != nil {
		t.Fatalf("delete: %v", err)
	}
	if err := s.Delete(ctx, "a", v2); err != nil {
		t.Fatalf("delete of a missing key must succeed: %v", err)
	}
	if err := s.Delete(ctx, "never", 0); err != nil {
		t.Fatalf("unconditional delete of a missing key: %v", err)
	}
	if _, err := s.Get(ctx, "a"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("get deleted: want ErrNotFound, got %v", err)
	}
}

// testTxn: a transaction applies all of its operations or none.
func testTxn(t *testing.T, s kv.Store) {
	ctx := context.Background()
	va, err := s.Put(ctx, "t/a", []byte("a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	// Creating b and c while a holds a stale version: nothing happens.
	_, err = s.Txn(ctx, []kv.Op{{Key: "t/b", Value: []byte("b")}, {Key: "t/c", Value: []byte("c")}, {Key: "t/a", Value: []byte("a2"), Version: va + 1000}})
	if !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("stale transaction: want ErrConflict, got %v", err)
	}
	if _, err := s.Get(ctx, "t/b"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("a failed transaction wrote t/b: %v", err)
	}
	// The same with the right version: all three are written.
	tv, err := s.Txn(ctx, []kv.Op{{Key: "t/b", Value: []byte("b")}, {Key: "t/c", Value: []byte("c")}, {Key: "t/a", Value: []byte("a2"), Version: va}})
	if err != nil {
		t.Fatalf("transaction: %v", err)
	}
	ps, _, err := s.List(ctx, "t/")
	if err != nil || len(ps) != 3 || string(ps[0].Value) != "a2" || ps[1].Version != tv || ps[2].Version != tv || ps[0].Version != tv {
		t.Fatalf("after the transaction: %+v %v", ps, err)
	}
	// Deletes: a stale version fails the whole transaction; then one by
	// version, one whatever it is, and missing keys (which succeed).
	_, err = s.Txn(ctx, []kv.Op{{Key: "t/b", Delete: true, Version: ps[1].Version}, {Key: "t/c", Delete: true, Version: ps[1].Version + 1000}})
	if !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("stale delete: want ErrConflict, got %v", err)
	}
	if _, err := s.Txn(ctx, []kv.Op{{Key: "t/b", Delete: true, Version: ps[1].Version}, {Key: "t/c", Delete: true}, {Key: "t/zz", Delete: true}, {Key: "t/zy", Delete: true, Version: 7}}); err != nil {
		t.Fatalf("deletes: %v", err)
	}
	if ps, _, _ := s.List(ctx, "t/"); len(ps) != 1 || ps[0].Key != "t/a" {
		t.Fatalf("after the deletes: %+v", ps)
	}
	// Checks compare without writing; Any writes whatever the version.
	pa, _ := s.Get(ctx, "t/a")
	if _, err := s.Txn(ctx, []kv.Op{{Key: "t/a", Check: true, Version: pa.Version + 1}, {Key: "t/n", Value: []byte("n")}}); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("failed check: want ErrConflict, got %v", err)
	}
	if _, err := s.Txn(ctx, []kv.Op{{Key: "t/q", Check: true}, {Key: "t/a", Check: true, Version: pa.Version}, {Key: "t/n", Value: []byte("n"), Version: kv.Any}}); err != nil {
		t.Fatalf("checks that hold: %v", err)
	}
	if _, err := s.Txn(ctx, []kv.Op{{Key: "t/n", Value: []byte("n2"), Version: kv.Any}}); err != nil {
		t.Fatalf("write whatever the version: %v", err)
	}
	if p, err := s.Get(ctx, "t/n"); err != nil || string(p.Value) != "n2" {
		t.Fatalf("t/n: %+v %v", p, err)
	}
	if p, _ := s.Get(ctx, "t/a"); p.Version != pa.Version {
		t.Fatalf("a check wrote t/a: version %d, was %d", p.Version, pa.Version)
	}
	if _, err := s.Txn(ctx, []kv.Op{{Key: "t/q", Check: true, Version: 5}}); !errors.Is(err, kv.ErrConflict) {
		t.Fatalf("check of a missing key at a version: want ErrConflict, got %v", err)
	}
	if _, err := s.Txn(ctx, []kv.Op{{Key: "t/x"}, {Key: "t/x"}}); err == nil || errors.Is(err, kv.ErrConflict) {
		t.Fatalf("a transaction that writes a key twice must be refused, got %v", err)
	}
}

func testList(t *testing.T, s kv.Store) {
	ctx := context.Background()
	for _, k := range []string{"p/b", "p/a", "p/c/d", "q/x", "pz"} {
		if _, err := s.Put(ctx, k, []byte(k), 0); err != nil {
			t.Fatal(err)
		}
	}
	ps, index, err := s.List(ctx, "p/")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, p := range ps {
		keys = append(keys, p.Key)
		if string(p.Value) != p.Key || p.Version == 0 {
			t.Errorf("pair %+v", p)
		}
	}
	if got := strings.Join(keys, ","); got != "p/a,p/b,p/c/d" {
		t.Fatalf("list p/: %s", got)
	}
	if index == 0 {
		t.Fatal("list index is 0")
	}
	if ps, _, err := s.List(ctx, "none/"); err != nil || len(ps) != 0 {
		t.Fatalf("empty list: %v %v", ps, err)
	}
}

func testWatch(t *testing.T, s kv.Store) {
	ctx := context.Background()
	if _, err := s.Put(ctx, "w/1", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	_, index, err := s.List(ctx, "w/")
	if err != nil {
		t.Fatal(err)
	}
	// The write comes once the first watch is (most likely) waiting; a
	// watch that does not block would return again and again meanwhile.
	var wrote atomic.Bool
	go func() {
		time.Sleep(300 * time.Millisecond)
		wrote.Store(true)
		_, _ = s.Put(context.Background(), "w/2", []byte("y"), 0)
	}()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for returns := 1; ; returns++ {
		ps, next, err := s.Watch(wctx, "w/", index)
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if len(ps) == 2 {
			if next <= index {
				t.Fatalf("watch index did not advance: %d -> %d", index, next)
			}
			break
		}
		if !wrote.Load() && returns > 3 {
			t.Fatalf("watch returned %d times with nothing new: it does not block", returns)
		}
		index = next
	}
	// A watch with nothing changing ends with its context.
	short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	_, idx, _ := s.List(ctx, "w/")
	if _, _, err := s.Watch(short, "w/", idx); err == nil {
		t.Fatal("watch without changes returned without error before its context ended")
	}
}

func testConcurrent(t *testing.T, s kv.Store) {
	ctx := context.Background()
	const workers, each = 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := kv.Update(ctx, s, "counter", func(n *int, _ bool) error { *n++; return nil })
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	p, err := s.Get(ctx, "counter")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(string(p.Value)); n != workers*each {
		t.Fatalf("lost updates: counter %d, want %d", n, workers*each)
	}
}

func testUpdate(t *testing.T, s kv.Store) {
	ctx := context.Background()
	v, err := kv.Update(ctx, s, "u", func(p *kv.Pool, exists bool) error {
		if exists {
			t.Error("exists on first update")
		}
		p.CIDR = "10.0.0.0/8"
		return nil
	})
	if err != nil || v.CIDR != "10.0.0.0/8" {
		t.Fatalf("%+v %v", v, err)
	}
	if _, err := kv.Update(ctx, s, "u", func(p *kv.Pool, _ bool) error { return kv.ErrUnchanged }); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, s, "u", func(p *kv.Pool, _ bool) error { return kv.ErrDelete }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "u"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("after ErrDelete: %v", err)
	}
}

func TestBoltPersistsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	s, err := kv.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	v1, err := s.Put(context.Background(), "k", []byte("v"), 0)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = kv.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := s.Get(context.Background(), "k")
	if err != nil || string(p.Value) != "v" || p.Version != v1 {
		t.Fatalf("after reopen: %+v %v", p, err)
	}
	v2, err := s.Put(context.Background(), "k2", nil, 0)
	if err != nil || v2 <= v1 {
		t.Fatalf("versions must keep increasing after reopen: %d then %d (%v)", v1, v2, err)
	}
}

func TestConsulUnreachableIsClassified(t *testing.T) {
	s, err := kv.NewConsul(kv.ConsulConfig{Addresses: []string{"127.0.0.1:1"}, Scheme: "http", Prefix: "x/"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = s.Get(ctx, "k")
	if !errors.Is(err, kv.ErrUnavailable) {
		t.Fatalf("want ErrUnavailable, got %v", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("error must name the store: %v", err)
	}
}

func TestMain(m *testing.M) {
	os.Exit(testkit.MainWithConsul(m, 18500, &consulAddr))
}

func TestConsulFailsOver(t *testing.T) {
	testkit.Require(t, consulAddr != "", "no consul server (run make consul, or set CONSUL_BIN)")
	s, err := kv.NewConsul(kv.ConsulConfig{Addresses: []string{"127.0.0.1:1", consulAddr}, Scheme: "http", Prefix: "failover/"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.Put(ctx, "k", []byte("v"), 0); err != nil {
		t.Fatalf("put with the first server down: %v", err)
	}
	if p, err := s.Get(ctx, "k"); err != nil || string(p.Value) != "v" {
		t.Fatalf("get: %+v %v", p, err)
	}
	if err := s.Delete(ctx, "k", 0); err != nil {
		t.Fatal(err)
	}
}

// M6: ListJSON used to end at the first record that did not decode, so one
// bad value hid every other record under the prefix. Now it is handed to
// the caller's skipped function and the listing goes on; without one, the
// listing still fails with a *DecodeError that names the key and the store.
func TestListJSONSkipsUnreadable(t *testing.T) {
	for _, st := range kvtest.Stores(consulAddr) {
		mk := st.Make
		t.Run(st.Name, func(t *testing.T) {
			s, ctx := mk(t), context.Background()
			for key, value := range map[string]string{"hosts/a": `{"id":"a"}`, "hosts/b": "garbage", "hosts/c": `{"id":"c"}`} {
				if _, err := s.Put(ctx, key, []byte(value), 0); err != nil {
					t.Fatal(err)
				}
			}
			var got, skipped []string
			_, err := kv.ListJSON(ctx, s, kv.HostsPrefix, func(_ string, _ uint64, h kv.Host) error {
				got = append(got, h.ID)
				return nil
			}, func(e *kv.DecodeError) { skipped = append(skipped, e.Key) })
			if err != nil || strings.Join(got, ",") != "a,c" || strings.Join(skipped, ",") != "hosts/b" {
				t.Fatalf("got %v, skipped %v, err %v", got, skipped, err)
			}
			_, err = kv.ListJSON(ctx, s, kv.HostsPrefix, func(string, uint64, kv.Host) error { return nil }, nil)
			var derr *kv.DecodeError
			if !errors.As(err, &derr) || derr.Key != "hosts/b" || !strings.Contains(err.Error(), s.String()) || !strings.Contains(err.Error(), "delete the key") {
				t.Fatalf("without skipped: want a DecodeError naming hosts/b, the store and the fix, got %v", err)
			}
		})
	}
}

func TestPrefixFromKey(t *testing.T) {
	p, err := kv.PrefixFromKey(kv.PoolKey("10.244.1.64/26"))
	if err != nil || p.String() != "10.244.1.64/26" {
		t.Fatalf("%v %v", p, err)
	}
	if _, err := kv.PrefixFromKey("garbage"); err == nil {
		t.Fatal("a segment without a prefix must fail")
	}
}

// L12: a value shorter than its 8-byte version (a damaged file) used to
// panic on raw[:8] in Get, List, Put and Delete, during Restore, before the
// socket was served: the plugin crash-looped. Now the key is an error of
// its own: Get and Put name it, List lists it with Pair.Err (ListJSON
// reports it like any unreadable record), and Delete(key, 0) removes it.
func TestBoltDamagedValueIsAnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.db")
	ctx := context.Background()
	s, err := kv.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "hosts/a", []byte(`{"id":"a"}`), 0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("kv")).Put([]byte("hosts/b"), []byte{1, 2, 3}) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err = kv.OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Get(ctx, "hosts/b"); err == nil || errors.Is(err, kv.ErrNotFound) || !strings.Contains(err.Error(), "hosts/b") || !strings.Contains(err.Error(), "damaged") {
		t.Fatalf("get: want an error naming the damaged key, got %v", err)
	}
	ps, _, err := s.List(ctx, "hosts/")
	if err != nil || len(ps) != 2 || ps[0].Err != nil || ps[1].Err == nil {
		t.Fatalf("list: %+v %v", ps, err)
	}
	var got, skipped []string
	if _, err := kv.ListJSON(ctx, s, "hosts/", func(_ string, _ uint64, h kv.Host) error {
		got = append(got, h.ID)
		return nil
	}, func(e *kv.DecodeError) { skipped = append(skipped, e.Key) }); err != nil || len(got) != 1 || len(skipped) != 1 || skipped[0] != "hosts/b" {
		t.Fatalf("ListJSON: got %v, skipped %v, %v", got, skipped, err)
	}
	if _, err := s.Put(ctx, "hosts/b", []byte("{}"), 0); err == nil || errors.Is(err, kv.ErrConflict) {
		t.Fatalf("put over a damaged value: want an error that is not a conflict, got %v", err)
	}
	if err := s.Delete(ctx, "hosts/b", 7); err == nil {
		t.Fatal("a versioned delete of a damaged value must fail")
	}
	if err := s.Delete(ctx, "hosts/b", 0); err != nil {
		t.Fatalf("unconditional delete: %v", err)
	}
	if _, err := s.Get(ctx, "hosts/b"); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
}
