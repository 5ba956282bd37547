package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// The last holder's cascade used version-0 deletes after the pool
// record was gone, deleting what a host registering the subnet again wrote
// meanwhile. Now the pool is marked as being released until its children are
// gone; a registration finishes the removal first, and a removal interrupted
// half way (the releaser died) is finished by the next registrant.
func TestReleaseIsFinishedBeforeReregistration(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.96.0.0/24", "", nil)
		old := addr(t, a, id, "", mac(1))
		// a died half way through its release: the pool is marked (and
		// a's holder key gone with it), its address record is still there.
		if _, err := kv.Update(ctx, e.store, kv.PoolPath("10.96.0.0/24"), func(p *kv.Pool, _ bool) error {
			p.Releasing = true
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := e.store.Delete(ctx, kv.HolderPath("10.96.0.0/24", "a/"+ipam.LocalSpace), 0); err != nil {
			t.Fatal(err)
		}
		_, err := a.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptMACAddress: mac(9)}})
		wantErr(t, err, errdefs.ErrInvalid, "being released")
		// b registers the subnet afresh: the old incarnation's records are
		// gone first, and b's own records stay.
		id = pool(t, b, "10.96.0.0/24", "", nil)
		if _, err := e.store.Get(ctx, kv.AddressPath("10.96.0.0/24", old.Addr().String())); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("old incarnation's address: %v", err)
		}
		got := addr(t, b, id, "", mac(2))
		var p kv.Pool
		if _, err := kv.GetJSON(ctx, e.store, kv.PoolPath("10.96.0.0/24"), &p); err != nil || p.Releasing {
			t.Fatalf("pool after re-registration: %+v %v", p, err)
		}
		if h, err := kv.PoolHolders(ctx, e.store, "10.96.0.0/24", p.Holders); err != nil || len(h) != 1 || !h["b/"+ipam.LocalSpace] {
			t.Fatalf("holders after re-registration: %v %v", h, err)
		}
		// A late second release by a (Docker replays) removes nothing of b's.
		if err := a.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, kv.AddressPath("10.96.0.0/24", got.Addr().String())); err != nil {
			t.Fatalf("b's address after a's late release: %v", err)
		}
	})
}

// Two hosts creating networks without --subnet at once picked
// the same automatic pool and the second joined it, merging two unrelated
// networks. An automatic pick never joins. Docker replaying the pool it got
// (as an explicit pool, after a daemon restart) is confirmed.
func TestAutomaticPoolsNeverJoin(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		var wg sync.WaitGroup
		ids := make([]ipam.PoolID, 4)
		errs := make([]error, 4)
		for i := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids[i], errs[i] = e.host(fmt.Sprintf("h%d", i)).RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace})
			}()
		}
		wg.Wait()
		seen := map[netip.Prefix]bool{}
		for i, id := range ids {
			if errs[i] != nil {
				t.Fatalf("host %d: %v", i, errs[i])
			}
			if seen[id.CIDR] {
				t.Fatalf("two automatic networks share pool %s: %v", id.CIDR, ids)
			}
			seen[id.CIDR] = true
		}
		// The replay of h0's pool, explicit this time, is h0's own.
		again, err := e.host("h0").RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: ids[0].CIDR.String()})
		if err != nil || again != ids[0] {
			t.Fatalf("replay of an automatic pool: %v %v", again, err)
		}
		// Another host naming it explicitly is refused.
		_, err = e.host("h9").RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: ids[0].CIDR.String()})
		wantErr(t, err, errdefs.ErrInUse, "already registered")
	})
}
