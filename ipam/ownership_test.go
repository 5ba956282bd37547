package ipam_test

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// hostUsing is a host whose driver has a network on the pools in use.
func (e env) hostUsing(id string, inUse func(ipam.PoolID) bool) *ipam.IPAM {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return ipam.New(e.store, ipam.Config{Host: id, AutoRange: netip.MustParsePrefix("10.240.0.0/22"), AutoBits: 24,
		LeaseTTL: 3600e9, Now: e.clock.Now, DeferRelease: inUse}, log)
}

// Audit H1: a refused duplicate create (same subnet, second network on the
// host) is rolled back by Docker with ReleasePool; before the fix that
// release removed the pool, its network record, VNI and addresses under the
// live first network.
func TestRefusedDuplicateKeepsPool(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		live := map[string]bool{}
		var mu sync.Mutex
		a := e.hostUsing("a", func(id ipam.PoolID) bool { mu.Lock(); defer mu.Unlock(); return live[id.CIDR.String()] })
		id := pool(t, a, "10.95.0.0/24", "", nil)
		mu.Lock()
		live["10.95.0.0/24"] = true // network n1 created on the pool
		mu.Unlock()
		if _, err := e.store.Put(ctx, kv.NetworkPath("10.95.0.0/24"), []byte(`{"pool":"10.95.0.0/24","backend":"vxlan","vni":7}`), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Put(ctx, kv.VNIPath(7), []byte("10.95.0.0/24"), 0); err != nil {
			t.Fatal(err)
		}
		c1 := addr(t, a, id, "", mac(1))
		// n2: RequestPool (joins), CreateNetwork refused, Docker releases.
		pool(t, a, "10.95.0.0/24", "", nil)
		if err := a.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{kv.PoolPath("10.95.0.0/24"), kv.NetworkPath("10.95.0.0/24"), kv.VNIPath(7), kv.AddressPath("10.95.0.0/24", c1.Addr().String())} {
			if _, err := e.store.Get(ctx, k); err != nil {
				t.Fatalf("%s after the refused create's release: %v", k, err)
			}
		}
		addr(t, a, id, "", mac(2)) // n1 still allocates
		// n1 removed: Docker releases the pool (deferred: n1 still
		// exists), then the driver deletes n1 and releases it.
		if err := a.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, kv.PoolPath("10.95.0.0/24")); err != nil {
			t.Fatalf("pool released before its network was deleted: %v", err)
		}
		mu.Lock()
		live["10.95.0.0/24"] = false
		mu.Unlock()
		if err := a.Release(ctx, id); err != nil {
			t.Fatal(err)
		}
		if left := keys(t, e.store, ""); len(left) > 1 || (len(left) == 1 && left[0] != kv.PoolsGuard) {
			t.Fatalf("left in the store after the last release: %v", left)
		}
	})
}

// Audit M2: the last holder's cascade used version-0 deletes after the pool
// record was gone, deleting what a host registering the subnet again wrote
// meanwhile. Now the pool is marked as being released until its children are
// gone; a registration finishes the removal first, and a removal interrupted
// half way (the releaser died) is finished by the next registrant.
func TestReleaseIsFinishedBeforeReregistration(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.96.0.0/24", "", nil)
		old := addr(t, a, id, "", mac(1))
		// a died half way through its release: the pool is marked, its
		// address record is still there.
		if _, err := kv.Update(ctx, e.store, kv.PoolPath("10.96.0.0/24"), func(p *kv.Pool, _ bool) error {
			p.Releasing, p.Holders = true, map[string]bool{}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		_, err := a.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptMACAddress: mac(9)}})
		wantErr(t, err, kv.ErrInvalid, "being released")
		// b registers the subnet afresh: the old incarnation's records are
		// gone first, and b's own records stay.
		id = pool(t, b, "10.96.0.0/24", "", nil)
		if _, err := e.store.Get(ctx, kv.AddressPath("10.96.0.0/24", old.Addr().String())); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("old incarnation's address: %v", err)
		}
		got := addr(t, b, id, "", mac(2))
		var p kv.Pool
		if _, err := kv.GetJSON(ctx, e.store, kv.PoolPath("10.96.0.0/24"), &p); err != nil || p.Releasing || !p.Holders["b/"+ipam.LocalSpace] {
			t.Fatalf("pool after re-registration: %+v %v", p, err)
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

// Audit M15: two hosts creating networks without --subnet at once picked
// the same automatic pool and the second joined it, merging two unrelated
// networks. An automatic pick never joins. Docker replaying the pool it got
// (as an explicit pool, after a daemon restart) is confirmed (audit S2).
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
		wantErr(t, err, kv.ErrInUse, "already registered")
	})
}

// Audit S6: Docker releases an address with no allocation identity; a late
// second release (dockerd crashed during cleanup) after the address went to
// a new container of the same host freed the new holder's record. The
// driver's live endpoints now keep it.
func TestLateReleaseKeepsNewHolder(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		var mu sync.Mutex
		live := map[netip.Addr]bool{}
		a := e.host("a")
		id := pool(t, a, "10.93.0.0/24", "", nil)
		log := logrus.New()
		log.SetLevel(logrus.WarnLevel)
		a = ipam.New(e.store, ipam.Config{Host: "a", LeaseTTL: 3600e9, Now: e.clock.Now,
			AddressInUse: func(_ ipam.PoolID, ip netip.Addr) bool { mu.Lock(); defer mu.Unlock(); return live[ip] }}, log)
		first := addr(t, a, id, "", mac(1))
		if err := a.ReleaseAddress(ctx, id, first.Addr().String()); err != nil {
			t.Fatal(err)
		}
		second := addr(t, a, id, "", mac(2))
		if second.Addr() != first.Addr() {
			t.Fatalf("lowest free address not reused (%s, then %s): the test needs the reuse", first, second)
		}
		mu.Lock()
		live[second.Addr()] = true // the new container's endpoint exists
		mu.Unlock()
		if err := a.ReleaseAddress(ctx, id, first.Addr().String()); err != nil {
			t.Fatal(err)
		}
		var rec kv.Address
		if _, err := kv.GetJSON(ctx, e.store, kv.AddressPath("10.93.0.0/24", second.Addr().String()), &rec); err != nil || rec.MAC != mac(2) {
			t.Fatalf("the new holder's record after a late release: %+v %v", rec, err)
		}
	})
}
