package ipam_test

import (
	"errors"
	"testing"
	"time"

	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

func register(t *testing.T, e env, id string) {
	t.Helper()
	if _, err := kv.Update(ctx, e.store, kv.HostPath(id), func(h *kv.Host, _ bool) error {
		*h = kv.Host{ID: id, Address: "192.0.2.1", Renewed: e.clock.Now().UTC()}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Audit M3: the addresses of a host that is gone stayed "used" for good, and
// reclaimed blocks stayed partly full. They are collected once the host's
// registration has lapsed for GoneAfter lease lifetimes, not before.
func TestCollectGone(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		register(t, e, "a")
		register(t, e, "b")
		id := pool(t, a, "10.82.0.0/24", "", nil)
		pool(t, b, "10.82.0.0/24", "", nil)
		ipB := addr(t, b, id, "", mac(1)).Addr().String()
		ipA := addr(t, a, id, "", mac(2)).Addr().String()
		e.clock.Add(90 * time.Minute) // b silent for 1.5 lifetimes: not gone yet
		register(t, e, "a")
		if got, err := a.CollectGone(ctx); err != nil || got != (ipam.Collected{}) {
			t.Fatalf("collected %+v %v before b was gone", got, err)
		}
		e.clock.Add(time.Hour) // 2.5 lifetimes
		register(t, e, "a")
		got, err := a.CollectGone(ctx)
		if err != nil || got.Addresses != 1 || got.Blocks != 1 || got.Hosts != 1 {
			t.Fatalf("collected %+v %v, want b's address, block and host record", got, err)
		}
		for k, want := range map[string]error{kv.AddressPath("10.82.0.0/24", ipB): kv.ErrNotFound, kv.AddressPath("10.82.0.0/24", ipA): nil, kv.HostPath("b"): kv.ErrNotFound} {
			if _, err := e.store.Get(ctx, k); !errors.Is(err, want) && !(want == nil && err == nil) {
				t.Fatalf("%s: %v, want %v", k, err, want)
			}
		}
		// b comes back: its live endpoint's record is taken back.
		if err := b.Reassert(ctx, id, ipB, mac(1)); err != nil {
			t.Fatal(err)
		}
		var rec kv.Address
		if _, err := kv.GetJSON(ctx, e.store, kv.AddressPath("10.82.0.0/24", ipB), &rec); err != nil || rec.Host != "b" || rec.MAC != mac(1) {
			t.Fatalf("taken back: %+v %v", rec, err)
		}
		// An address another host holds is not taken, and said so.
		wantErr(t, b.Reassert(ctx, id, ipA, mac(3)), nil, ipA, "held by host a", "restart the container")
	})
}
