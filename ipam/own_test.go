package ipam_test

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// counting counts what a host asks of the store; afterList, when set, runs
// after every List of a prefix it names.
type counting struct {
	kv.Store
	gets, lists, txns, puts atomic.Int64
	afterList               func(prefix string)
}

func (c *counting) Get(ctx context.Context, key string) (kv.Pair, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, key)
}

func (c *counting) List(ctx context.Context, prefix string) ([]kv.Pair, uint64, error) {
	c.lists.Add(1)
	ps, i, err := c.Store.List(ctx, prefix)
	if c.afterList != nil {
		c.afterList(prefix)
	}
	return ps, i, err
}

func (c *counting) Put(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	c.puts.Add(1)
	return c.Store.Put(ctx, key, value, version)
}

func (c *counting) Txn(ctx context.Context, ops []kv.Op) (uint64, error) {
	c.txns.Add(1)
	return c.Store.Txn(ctx, ops)
}

func (e env) countedHost(id string) (*ipam.IPAM, *counting) {
	c := &counting{Store: e.store}
	return e.withStore(c).host(id), c
}

func (e env) withStore(s kv.Store) env { return env{store: s, clock: e.clock} }

// Issue 10: a container start used to read the whole pool (its record,
// every block, every address, every host) and, with concurrent starts on one
// host, to collide with itself. Now, once the host knows the pool, an
// allocation from its own block is one transaction and nothing else, however
// many addresses the pool holds, and 40 concurrent starts on one host
// neither collide nor retry.
func TestAllocationReadsNothingThatGrows(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		other := e.host("other")
		id := pool(t, other, "10.120.0.0/20", "", map[string]string{ipam.OptBlockSize: "24"})
		for i := range 300 {
			addr(t, other, id, "", mac(i))
		}
		if _, err := kv.PutJSON(ctx, e.store, kv.NetworkPath("10.120.0.0/20"), kv.PoolNetwork{Pool: "10.120.0.0/20", Backend: "vxlan"}, 0); err != nil {
			t.Fatal(err)
		}
		a, c := e.countedHost("a")
		pool(t, a, "10.120.0.0/20", "", nil)
		addr(t, a, id, "", mac(1000)) // loads the pool and claims a block
		gets, lists, txns, puts := c.gets.Load(), c.lists.Load(), c.txns.Load(), c.puts.Load()
		var wg sync.WaitGroup
		got := make(chan netip.Addr, 40)
		for i := range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := a.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptMACAddress: mac(2000 + i)}})
				if err != nil {
					t.Error(err)
					return
				}
				got <- a.Addr()
			}()
		}
		wg.Wait()
		close(got)
		seen := map[netip.Addr]bool{}
		for ip := range got {
			if seen[ip] {
				t.Fatalf("%s handed out twice", ip)
			}
			seen[ip] = true
		}
		if n := c.txns.Load() - txns; n != 40 {
			t.Errorf("40 starts took %d transactions, want 40 (no collision, no retry)", n)
		}
		if g, l, p := c.gets.Load()-gets, c.lists.Load()-lists, c.puts.Load()-puts; g != 0 || l != 0 || p != 0 {
			t.Errorf("40 starts also took %d gets, %d listings and %d puts; want none", g, l, p)
		}
	})
}

// Routing watches route exceptions, never the pool's addresses: an
// endpoint address away from its block's owner has one (borrowed, given
// with --ip in another host's block, taken over from a swarm manager), the
// others have none, and an exception goes with its address.
func TestRouteExceptions(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.121.0.0/29", "", map[string]string{ipam.OptBlockSize: "30"}) // blocks .0/30 and .4/30
		pool(t, b, "10.121.0.0/29", "", nil)
		exceptions := func() map[string]string {
			out := map[string]string{}
			if _, err := kv.ListJSON(ctx, e.store, kv.ExceptionPrefix("10.121.0.0/29"), func(_ string, _ uint64, x kv.Address) error {
				out[x.IP] = x.Host
				return nil
			}, nil); err != nil {
				t.Fatal(err)
			}
			return out
		}
		// a's block .0/30 holds .1 to .3, b's .4/30 holds .4 to .6.
		var b2 netip.Prefix
		for i := range 3 {
			addr(t, a, id, "", mac(10+i))
			b2 = addr(t, b, id, "", mac(20+i))
		}
		if x := exceptions(); len(x) != 0 {
			t.Fatalf("addresses in their owner's block have exceptions: %v", x)
		}
		// Both blocks are full: once b frees one, a borrows it.
		if err := b.ReleaseAddress(ctx, id, b2.Addr().String()); err != nil {
			t.Fatal(err)
		}
		borrowed := addr(t, a, id, "", mac(5))
		if borrowed.Addr() != b2.Addr() {
			t.Fatalf("a borrowed %s, want %s", borrowed, b2)
		}
		if x := exceptions(); len(x) != 1 || x[borrowed.Addr().String()] != "a" {
			t.Fatalf("exceptions after a borrow: %v", x)
		}
		if err := a.ReleaseAddress(ctx, id, borrowed.Addr().String()); err != nil {
			t.Fatal(err)
		}
		if x := exceptions(); len(x) != 0 {
			t.Fatalf("the exception outlived its address: %v", x)
		}
		// --ip inside another host's block.
		fixed := addr(t, a, id, b2.Addr().String(), mac(6))
		if x := exceptions(); len(x) != 1 || x[fixed.Addr().String()] != "a" {
			t.Fatalf("exceptions after --ip in b's block: %v", x)
		}
	})
}

// A swarm take-over publishes where the task runs, and the release by the
// node that runs it removes it.
func TestTakeOverPublishesTheException(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		mgr, w1 := e.host("mgr"), e.host("w1")
		id, err := mgr.RequestPool(ctx, ipam.PoolRequest{Space: ipam.GlobalSpace, Pool: "10.122.0.0/16"})
		if err != nil {
			t.Fatal(err)
		}
		task, err := mgr.RequestAddress(ctx, ipam.AddressRequest{Pool: id})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w1.RequestPool(ctx, ipam.PoolRequest{Space: ipam.GlobalSpace, Pool: "10.122.0.0/16"}); err != nil {
			t.Fatal(err)
		}
		ip := task.Addr().String()
		if _, err := w1.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: ip, Options: map[string]string{ipam.OptMACAddress: mac(1)}}); err != nil {
			t.Fatal(err)
		}
		var x kv.Address
		if _, err := kv.GetJSON(ctx, e.store, kv.ExceptionPath("10.122.0.0/16", ip), &x); err != nil || x.Host != "w1" {
			t.Fatalf("exception after the take-over: %+v %v", x, err)
		}
		if err := w1.ReleaseAddress(ctx, id, ip); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, kv.ExceptionPath("10.122.0.0/16", ip)); err == nil {
			t.Fatal("the exception outlived the task's address")
		}
	})
}

// Records made before exceptions existed (or a block that changed hands)
// get theirs from the collection pass, and an exception whose address is
// gone is removed.
func TestCollectionPublishesExceptions(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.123.0.0/24", "", map[string]string{ipam.OptBlockSize: "26"})
		pool(t, b, "10.123.0.0/24", "", nil)
		addr(t, a, id, "", mac(1)) // a owns 10.123.0.0/26
		for _, h := range []string{"a", "b"} {
			if _, err := kv.PutJSON(ctx, e.store, kv.HostPath(h), kv.Host{ID: h, Renewed: e.clock.Now()}, 0); err != nil {
				t.Fatal(err)
			}
		}
		// An older version's borrow: b's address in a's block, no exception.
		old := kv.Address{IP: "10.123.0.40", Pool: "10.123.0.0/24", Host: "b", Kind: kv.KindEndpoint, MAC: mac(2), Created: e.clock.Now()}
		if _, err := kv.PutJSON(ctx, e.store, kv.AddressPath(old.Pool, old.IP), old, 0); err != nil {
			t.Fatal(err)
		}
		// An exception left without its address.
		stale := kv.Address{IP: "10.123.0.41", Pool: old.Pool, Host: "b", Kind: kv.KindEndpoint}
		if _, err := kv.PutJSON(ctx, e.store, kv.ExceptionPath(stale.Pool, stale.IP), stale, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := b.CollectGone(ctx, nil); err != nil {
			t.Fatal(err)
		}
		var x kv.Address
		if _, err := kv.GetJSON(ctx, e.store, kv.ExceptionPath(old.Pool, old.IP), &x); err != nil || x.Host != "b" {
			t.Fatalf("no exception published for the old borrow: %+v %v", x, err)
		}
		if _, err := e.store.Get(ctx, kv.ExceptionPath(stale.Pool, stale.IP)); err == nil {
			t.Fatal("an exception without its address stayed")
		}
	})
}

// Holders are one key each, so the last holder can no longer decide in the
// same write as its leaving: it marks the pool, then looks again. A host
// that joined between its look and its mark keeps the pool (and its
// network record); a host that comes after the mark finishes the removal
// and registers afresh (TestReleaseIsFinishedBeforeReregistration).
func TestJoinWhileTheLastHolderLeaves(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		cidr := "10.124.0.0/24"
		leaver := &counting{Store: e.store}
		a := e.withStore(leaver).host("a")
		b := e.host("b")
		id := pool(t, a, cidr, "", nil)
		if _, err := kv.PutJSON(ctx, e.store, kv.NetworkPath(cidr), kv.PoolNetwork{Pool: cidr, Backend: "vxlan", VNI: 300}, 0); err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		leaver.afterList = func(prefix string) {
			if prefix == kv.HolderPrefix(cidr) {
				once.Do(func() { pool(t, b, cidr, "", nil) }) // b joins right after a looked
			}
		}
		if err := a.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		var p kv.Pool
		if _, err := kv.GetJSON(ctx, e.store, kv.PoolPath(cidr), &p); err != nil || p.Releasing {
			t.Fatalf("pool after a left while b joined: %+v %v", p, err)
		}
		if h, err := kv.PoolHolders(ctx, e.store, cidr, p.Holders); err != nil || len(h) != 1 || !h["b/"+ipam.LocalSpace] {
			t.Fatalf("holders: %v %v", h, err)
		}
		if _, err := e.store.Get(ctx, kv.NetworkPath(cidr)); err != nil {
			t.Fatalf("b's network record: %v", err)
		}
		if got := addr(t, b, id, "", mac(1)); !strings.HasPrefix(got.String(), "10.124.0.") {
			t.Fatalf("b allocates: %s", got)
		}
	})
}

// A block that changes hands is announced in the pool's block feed, in the
// claim's transaction; the writer removes its entry once it is older than
// kv.FeedRetention (at its next lease renewal), and a release announces the
// removal.
func TestBlockFeed(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		cidr := "10.125.0.0/24"
		a := e.host("a")
		id := pool(t, a, cidr, "", map[string]string{ipam.OptBlockSize: "26"})
		addr(t, a, id, "", mac(1))
		feed := func() map[string]kv.BlockChange {
			out := map[string]kv.BlockChange{}
			if _, err := kv.ListJSON(ctx, e.store, kv.BlockFeedPrefix(cidr), func(key string, _ uint64, c kv.BlockChange) error {
				out[key] = c
				return nil
			}, nil); err != nil {
				t.Fatal(err)
			}
			return out
		}
		f := feed()
		c, ok := f[kv.BlockFeedPath(cidr, "10.125.0.0/26")]
		if len(f) != 1 || !ok || c.Block.Host != "a" || c.Deleted {
			t.Fatalf("feed after a claim: %+v", f)
		}
		blk, err := e.store.Get(ctx, kv.BlockPath(cidr, "10.125.0.0/26"))
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Add(kv.FeedRetention + time.Second)
		if err := a.RenewLeases(ctx); err != nil {
			t.Fatal(err)
		}
		if f := feed(); len(f) != 0 {
			t.Fatalf("feed after the retention: %+v", f)
		}
		if p, err := e.store.Get(ctx, kv.BlockPath(cidr, "10.125.0.0/26")); err != nil || p.Version != blk.Version {
			t.Fatalf("the block changed with its feed entry: %+v %v", p, err)
		}
	})
}
