package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
)

var consulAddr string

func TestMain(m *testing.M) {
	os.Exit(testkit.MainWithConsul(m, 18600, &consulAddr))
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// env is one store shared by several simulated hosts.
type env struct {
	store kv.Store
	clock *clock
}

func (e env) host(id string) *ipam.IPAM {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return ipam.New(e.store, ipam.Config{Host: id, AutoRange: netip.MustParsePrefix("10.240.0.0/22"), AutoBits: 24,
		LeaseTTL: time.Hour, Now: e.clock.Now}, log)
}

func forEachStore(t *testing.T, fn func(t *testing.T, e env)) {
	for _, st := range kvtest.Stores(consulAddr) {
		t.Run(st.Name, func(t *testing.T) {
			fn(t, env{store: st.Make(t), clock: &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}})
		})
	}
}

var ctx = context.Background()

func pool(t *testing.T, m *ipam.IPAM, cidr, rng string, opts map[string]string) ipam.PoolID {
	t.Helper()
	id, err := m.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: cidr, SubPool: rng, Options: opts})
	if err != nil {
		t.Fatalf("RequestPool %s: %v", cidr, err)
	}
	return id
}

func addr(t *testing.T, m *ipam.IPAM, id ipam.PoolID, want, mac string) netip.Prefix {
	t.Helper()
	opts := map[string]string{}
	if mac != "" {
		opts[ipam.OptMACAddress] = mac
	}
	a, err := m.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: want, Options: opts})
	if err != nil {
		t.Fatalf("RequestAddress %q: %v", want, err)
	}
	return a
}

func mac(i int) string { return fmt.Sprintf("02:42:00:00:%02x:%02x", i>>8, i&0xff) }

func wantErr(t *testing.T, err error, class error, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want an error with %q, got none", words)
	}
	if class != nil && !errors.Is(err, class) {
		t.Fatalf("error %q is not %v", err, class)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not say %q", err, w)
		}
	}
}

func TestPools(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.244.0.0/16", "", nil)
		if id.String() != "local:10.244.0.0/16" {
			t.Fatalf("pool id %s", id)
		}
		// The same pool again, here and on another host, is the same pool.
		if pool(t, a, "10.244.0.0/16", "", nil) != id || pool(t, b, "10.244.0.0/16", "", nil) != id {
			t.Fatal("same pool, different ID")
		}
		_, err := b.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.244.128.0/20"})
		wantErr(t, err, errdefs.ErrInUse, "10.244.128.0/20", "overlaps", "10.244.0.0/16")
		_, err = b.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.0.0.0/8"})
		wantErr(t, err, errdefs.ErrInUse, "10.244.0.0/16")
		_, err = b.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.244.0.0/16", SubPool: "10.244.1.0/24"})
		wantErr(t, err, errdefs.ErrInvalid, "--ip-range")
		_, err = b.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.244.0.0/16", Options: map[string]string{ipam.OptBlockSize: "24"}})
		wantErr(t, err, errdefs.ErrInvalid, "tartan.blocksize=26")
		for _, bad := range []struct{ pool, sub, word string }{
			{"10.1.0.1/16", "", "use 10.1.0.0/16"},
			{"banana", "", "not a CIDR"},
			{"fd00::/64", "", "IPv4"},
			{"10.2.0.0/31", "", "too small"},
			{"10.3.0.0/16", "10.4.0.0/24", "not inside"},
		} {
			_, err := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: bad.pool, SubPool: bad.sub})
			wantErr(t, err, errdefs.ErrInvalid, bad.word)
		}
		_, err = a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.5.0.0/16", Options: map[string]string{"color": "red"}})
		wantErr(t, err, errdefs.ErrInvalid, `"color"`, ipam.OptBlockSize)
		_, err = a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.5.0.0/16", Options: map[string]string{ipam.OptBlockSize: "12"}})
		wantErr(t, err, errdefs.ErrInvalid, "does not fit")
		_, err = a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, V6: true})
		wantErr(t, err, errdefs.ErrInvalid, "IPv6")
		// Automatic pools do not collide.
		p1, err := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace})
		if err != nil {
			t.Fatal(err)
		}
		p2, err := b.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace})
		if err != nil {
			t.Fatal(err)
		}
		if p1.CIDR.Overlaps(p2.CIDR) || p1.CIDR.Bits() != 24 {
			t.Fatalf("automatic pools %s and %s", p1, p2)
		}
		// The unspecified address asks for an automatic pool of that size,
		// as Docker's own IPAM reads it (Docker 29 passes it on).
		p3, err := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "0.0.0.0/23"})
		if err != nil {
			t.Fatal(err)
		}
		if p3.CIDR.Bits() != 23 || !netip.MustParsePrefix("10.240.0.0/22").Contains(p3.CIDR.Addr()) || p3.CIDR.Overlaps(p1.CIDR) || p3.CIDR.Overlaps(p2.CIDR) {
			t.Fatalf("automatic /23 %s beside %s and %s", p3, p1, p2)
		}
		_, err = a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "0.0.0.0/16"})
		wantErr(t, err, errdefs.ErrInvalid, "0.0.0.0/16", "automatic /16", "AUTO_POOL", "/22 to /30")
		_, err = a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "0.0.0.0/24", SubPool: "10.240.3.0/25"})
		wantErr(t, err, errdefs.ErrInvalid, "--ip-range")
		_, err = a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "0.0.0.0/24"})
		wantErr(t, err, errdefs.ErrInUse, "used up")
	})
}

func TestAddresses(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.244.0.0/16", "", nil)
		pool(t, b, "10.244.0.0/16", "", nil)
		gw, err := a.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptRequestType: ipam.GatewayType}})
		if err != nil || gw.String() != "10.244.0.1/16" {
			t.Fatalf("gateway %s %v", gw, err)
		}
		// Every host asking for the gateway gets the same one.
		gw2, err := b.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptRequestType: ipam.GatewayType}})
		if err != nil || gw2 != gw {
			t.Fatalf("second host's gateway %s %v", gw2, err)
		}
		_, err = b.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: "10.244.0.9", Options: map[string]string{ipam.OptRequestType: ipam.GatewayType}})
		wantErr(t, err, errdefs.ErrInUse, "already has gateway 10.244.0.1")
		first := addr(t, a, id, "", mac(1))
		if first.Bits() != 32 || !id.CIDR.Contains(first.Addr()) || first.Addr() == gw.Addr() {
			t.Fatalf("first address %s", first)
		}
		onB := addr(t, b, id, "", mac(2))
		blockA, _ := first.Addr().Prefix(26)
		if blockA.Contains(onB.Addr()) {
			t.Fatalf("host b got %s from host a's block %s", onB, blockA)
		}
		// A specific address: taken once, confirmed on replay, refused to others.
		fixed := addr(t, a, id, "10.244.200.7", mac(3))
		if fixed.String() != "10.244.200.7/32" {
			t.Fatalf("fixed %s", fixed)
		}
		if again := addr(t, a, id, "10.244.200.7", mac(3)); again != fixed {
			t.Fatalf("replay %s", again)
		}
		_, err = b.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: "10.244.200.7", Options: map[string]string{ipam.OptMACAddress: mac(4)}})
		wantErr(t, err, errdefs.ErrInUse, "10.244.200.7", "already in use", "host a")
		_, err = a.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: "10.245.0.1", Options: map[string]string{ipam.OptMACAddress: mac(5)}})
		wantErr(t, err, errdefs.ErrInvalid, "outside pool")
		_, err = a.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: "10.244.255.255", Options: map[string]string{ipam.OptMACAddress: mac(5)}})
		wantErr(t, err, errdefs.ErrInvalid, "broadcast")
		// Aux reservations belong to the pool: both hosts may reserve them.
		aux := addr(t, a, id, "10.244.100.100", "")
		if addr(t, b, id, "10.244.100.100", "") != aux {
			t.Fatal("aux reservation not shared")
		}
		// Releases: endpoint addresses go, reservations stay, missing is fine.
		if err := a.ReleaseAddress(ctx, id, "10.244.200.7"); err != nil {
			t.Fatal(err)
		}
		if err := a.ReleaseAddress(ctx, id, "10.244.200.7"); err != nil {
			t.Fatalf("second release: %v", err)
		}
		if err := a.ReleaseAddress(ctx, id, "10.244.100.100"); err != nil {
			t.Fatal(err)
		}
		_, err = b.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: "10.244.100.100", Options: map[string]string{ipam.OptMACAddress: mac(6)}})
		wantErr(t, err, errdefs.ErrInUse, "aux")
		if got := addr(t, b, id, "10.244.200.7", mac(7)); got.String() != "10.244.200.7/32" {
			t.Fatalf("released address not reusable: %s", got)
		}
	})
}

// TestDualStackPools: an IPv6 pool is leased in per-host blocks and handed
// out as an IPv4 one is: routed addresses are /128, each host takes from
// its own /112 block, the gateway is the pool's first address, and an
// address of the other family is refused by name.
func TestDualStackPools(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		req := ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "fd00:10::/64", V6: true}
		id, err := a.RequestPool(ctx, req)
		if err != nil || id.String() != "local:fd00:10::/64" {
			t.Fatalf("IPv6 pool %s %v", id, err)
		}
		if again, err := b.RequestPool(ctx, req); err != nil || again != id {
			t.Fatalf("same IPv6 pool on host b: %s %v", again, err)
		}
		gw, err := a.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptRequestType: ipam.GatewayType}})
		if err != nil || gw.String() != "fd00:10::1/64" {
			t.Fatalf("IPv6 gateway %s %v", gw, err)
		}
		onA, onB := addr(t, a, id, "", mac(1)), addr(t, b, id, "", mac(2))
		if onA.Bits() != 128 || onB.Bits() != 128 || !id.CIDR.Contains(onA.Addr()) || !id.CIDR.Contains(onB.Addr()) {
			t.Fatalf("routed IPv6 addresses %s %s", onA, onB)
		}
		blockA, _ := onA.Addr().Prefix(112)
		if blockA.Contains(onB.Addr()) {
			t.Fatalf("host b got %s from host a's block %s", onB, blockA)
		}
		fixed := addr(t, a, id, "fd00:10::beef", mac(3))
		if fixed.String() != "fd00:10::beef/128" {
			t.Fatalf("fixed %s", fixed)
		}
		_, err = a.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: "10.1.2.3", Options: map[string]string{ipam.OptMACAddress: mac(4)}})
		wantErr(t, err, errdefs.ErrInvalid, "family")
		if err := a.ReleaseAddress(ctx, id, "fd00:10::beef"); err != nil {
			t.Fatal(err)
		}
		// Each family reads its own block size from the network's
		// --ipam-opt; bad IPv6 pools are refused by name.
		id2, err := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "fd00:20::/64", V6: true,
			Options: map[string]string{ipam.OptBlockSize: "24", ipam.OptBlockSize6: "120"}})
		if err != nil {
			t.Fatal(err)
		}
		if b6, _ := addr(t, a, id2, "", mac(5)).Addr().Prefix(120); b6.String() != "fd00:20::/120" {
			t.Fatalf("blocksize6: first block %s", b6)
		}
		for _, bad := range []struct {
			r    ipam.PoolRequest
			want string
		}{
			{ipam.PoolRequest{Space: ipam.LocalSpace, V6: true}, "needs an IPv6 --subnet"},
			{ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "::/64", V6: true}, "needs an IPv6 --subnet"},
			{ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.9.0.0/16", V6: true}, "give an IPv6 one"},
			{ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "fd00:30::/64"}, "add --ipv6"},
			{ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "fd00:30::/64", V6: true, Options: map[string]string{ipam.OptBlockSize6: "48"}}, "tartan.blocksize6=48 does not fit"},
		} {
			_, err := a.RequestPool(ctx, bad.r)
			wantErr(t, err, errdefs.ErrInvalid, bad.want)
		}
	})
}

// An engine that skips the gateway (Docker 28's GwAllocCheck for routed
// networks) lets a container take the pool's first address; an older engine
// on another host that asks for the default gateway afterwards gets another
// free address, and every host then gets that one.
func TestGatewayAfterAnEngineSkippedIt(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.244.0.0/16", "", nil)
		pool(t, b, "10.244.0.0/16", "", nil)
		first := addr(t, a, id, "10.244.0.1", mac(1))
		gwReq := ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptRequestType: ipam.GatewayType}}
		gw, err := b.RequestAddress(ctx, gwReq)
		if err != nil {
			t.Fatalf("gateway after a container took the first address: %v", err)
		}
		if gw.Addr() == first.Addr() || !id.CIDR.Contains(gw.Addr()) || gw.Bits() != 16 {
			t.Fatalf("gateway %s (the container holds %s)", gw, first)
		}
		for _, h := range []*ipam.IPAM{a, b} {
			if again, err := h.RequestAddress(ctx, gwReq); err != nil || again != gw {
				t.Fatalf("gateway asked again: %s %v, want %s", again, err, gw)
			}
		}
		// A gateway the user names is still refused while a container
		// holds it.
		other := e.host("c")
		id2 := pool(t, other, "10.245.0.0/16", "", nil)
		addr(t, other, id2, "10.245.0.1", mac(2))
		_, err = other.RequestAddress(ctx, ipam.AddressRequest{Pool: id2, Address: "10.245.0.1", Options: gwReq.Options})
		wantErr(t, err, errdefs.ErrInUse, "10.245.0.1", "already in use")
	})
}

// keys lists the records under prefix (folder markers left out).
func keys(t *testing.T, s kv.Store, prefix string) []string {
	t.Helper()
	ps, _, err := s.List(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range ps {
		if !kv.IsFolder(p.Key) {
			out = append(out, p.Key)
		}
	}
	return out
}

func TestReleasePool(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.50.0.0/24", "", nil)
		pool(t, b, "10.50.0.0/24", "", nil)
		x := addr(t, a, id, "", mac(1))
		addr(t, b, id, "", mac(2))
		if err := b.ReleaseAddress(ctx, id, addr(t, b, id, "", mac(3)).Addr().String()); err != nil {
			t.Fatal(err)
		}
		if err := a.ReleaseAddress(ctx, id, x.Addr().String()); err != nil {
			t.Fatal(err)
		}
		if n := len(keys(t, e.store, kv.BlockPrefix("10.50.0.0/24"))); n != 2 {
			t.Fatalf("%d blocks, want 2", n)
		}
		// a is not the last holder: only its (now empty) block goes.
		if err := a.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		if n := len(keys(t, e.store, kv.BlockPrefix("10.50.0.0/24"))); n != 1 {
			t.Fatalf("%d blocks after a released, want 1", n)
		}
		if err := b.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		if left := keys(t, e.store, ""); len(left) > 1 || (len(left) == 1 && left[0] != kv.PoolsGuard) {
			t.Fatalf("left in the store after the last release: %v", left)
		}
		if err := b.ReleasePool(ctx, id); err != nil {
			t.Fatalf("second release: %v", err)
		}
	})
}

// A small pool is used to its last address by two hosts, through blocks and
// then borrowing, with no duplicate, and then refuses clearly.
func TestNoDuplicatesUntilFull(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		hosts := []*ipam.IPAM{e.host("a"), e.host("b"), e.host("c")}
		var id ipam.PoolID
		for _, h := range hosts {
			id = pool(t, h, "10.60.0.0/26", "", map[string]string{ipam.OptBlockSize: "29"})
		}
		capacity := 62
		var mu sync.Mutex
		seen := map[netip.Addr]string{}
		var wg sync.WaitGroup
		errs := make(chan error, 3*capacity)
		for i, h := range hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; ; j++ {
					a, err := h.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptMACAddress: mac(i*100 + j)}})
					if err != nil {
						if !errors.Is(err, errdefs.ErrInUse) || !strings.Contains(err.Error(), "full") {
							errs <- err
						}
						return
					}
					mu.Lock()
					if prev, dup := seen[a.Addr()]; dup {
						errs <- fmt.Errorf("duplicate %s (hosts %s and %d)", a, prev, i)
					}
					seen[a.Addr()] = fmt.Sprint(i)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		if len(seen) != capacity {
			t.Fatalf("handed out %d addresses of %d", len(seen), capacity)
		}
	})
}

func TestLeaseExpiry(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.70.0.0/30", "", nil) // one block
		pool(t, b, "10.70.0.0/30", "", nil)
		got := addr(t, a, id, "", mac(1))
		if err := a.ReleaseAddress(ctx, id, got.Addr().String()); err != nil {
			t.Fatal(err)
		}
		// b borrows while a's lease is live: the block stays a's.
		borrowed := addr(t, b, id, "", mac(2))
		if err := b.ReleaseAddress(ctx, id, borrowed.Addr().String()); err != nil {
			t.Fatal(err)
		}
		// a's lease ran out, but a is alive (it renews its registration):
		// b keeps borrowing instead of taking a's block.
		e.clock.Add(2 * time.Hour)
		if _, err := kv.PutJSON(ctx, e.store, kv.HostPath("a"), kv.Host{ID: "a", Renewed: e.clock.Now()}, 0); err != nil {
			t.Fatal(err)
		}
		kept := addr(t, b, id, "", mac(5))
		var blk kv.Block
		if _, err := kv.GetJSON(ctx, e.store, kv.BlockPath("10.70.0.0/30", "10.70.0.0/30"), &blk); err != nil || blk.Host != "a" {
			t.Fatalf("a live host's block was taken: %+v %v", blk, err)
		}
		if err := b.ReleaseAddress(ctx, id, kept.Addr().String()); err != nil {
			t.Fatal(err)
		}
		e.clock.Add(2 * time.Hour) // now a is silent too: its block is reclaimed
		addr(t, b, id, "", mac(3))
		if _, err := kv.GetJSON(ctx, e.store, kv.BlockPath("10.70.0.0/30", "10.70.0.0/30"), &blk); err != nil {
			t.Fatal(err)
		}
		if blk.Host != "b" {
			t.Fatalf("expired block not reclaimed: %+v", blk)
		}
		// Renewal keeps a live lease: b renews, time passes, a cannot take it.
		e.clock.Add(40 * time.Minute)
		if err := b.RenewLeases(ctx); err != nil {
			t.Fatal(err)
		}
		e.clock.Add(40 * time.Minute)
		addr(t, a, id, "", mac(4))
		if _, err := kv.GetJSON(ctx, e.store, kv.BlockPath("10.70.0.0/30", "10.70.0.0/30"), &blk); err != nil {
			t.Fatal(err)
		}
		if blk.Host != "b" {
			t.Fatalf("renewed lease was taken: %+v", blk)
		}
	})
}

// In the global space (swarm, SCOPE=global) the manager allocates without
// MACs; the node that runs a task asks for that address with its MAC and
// takes it over; the manager's replays confirm; releases go by holder.
func TestGlobalSpaceSwarm(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		ctx := context.Background()
		mgr, w1, w2 := e.host("mgr"), e.host("w1"), e.host("w2")
		id, err := mgr.RequestPool(ctx, ipam.PoolRequest{Space: ipam.GlobalSpace, Pool: "10.90.0.0/16"})
		if err != nil {
			t.Fatal(err)
		}
		task, err := mgr.RequestAddress(ctx, ipam.AddressRequest{Pool: id})
		if err != nil {
			t.Fatal(err)
		}
		ip := task.Addr().String()
		// The manager restarts and replays its allocation.
		if _, err := mgr.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: ip}); err != nil {
			t.Fatalf("manager replay: %v", err)
		}
		for _, w := range []*ipam.IPAM{w1, w2} {
			if _, err := w.RequestPool(ctx, ipam.PoolRequest{Space: ipam.GlobalSpace, Pool: "10.90.0.0/16"}); err != nil {
				t.Fatal(err)
			}
		}
		// w1 runs the task: it takes the address over, twice (a replay),
		// asking in the local space as Docker's nodes do.
		lid := ipam.PoolID{Space: ipam.LocalSpace, CIDR: id.CIDR}
		for i := 0; i < 2; i++ {
			if _, err := w1.RequestAddress(ctx, ipam.AddressRequest{Pool: lid, Address: ip, Options: map[string]string{ipam.OptMACAddress: mac(1)}}); err != nil {
				t.Fatalf("w1 takes over (%d): %v", i, err)
			}
		}
		var a kv.Address
		if _, err := kv.GetJSON(ctx, e.store, kv.AddressPath("10.90.0.0/16", ip), &a); err != nil || a.Host != "w1" || a.MAC != mac(1) {
			t.Fatalf("record after the take-over: %+v %v", a, err)
		}
		// The manager's release of a task w1 still runs leaves it to w1.
		if err := mgr.ReleaseAddress(ctx, id, ip); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, kv.AddressPath("10.90.0.0/16", ip)); err != nil {
			t.Fatalf("the manager released a running task's address: %v", err)
		}
		if err := w2.ReleaseAddress(ctx, id, ip); err != nil {
			t.Fatal(err)
		}
		if err := w1.ReleaseAddress(ctx, lid, ip); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, kv.AddressPath("10.90.0.0/16", ip)); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("w1's release left the address: %v", err)
		}
		// A VIP (manager only) is released by the manager.
		vip, err := mgr.RequestAddress(ctx, ipam.AddressRequest{Pool: id})
		if err != nil {
			t.Fatal(err)
		}
		if err := mgr.ReleaseAddress(ctx, id, vip.Addr().String()); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, kv.AddressPath("10.90.0.0/16", vip.Addr().String())); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("the manager's VIP was not released: %v", err)
		}
		// In the local space the same request is a conflict, naming the holder.
		other := pool(t, w1, "10.91.0.0/16", "", nil)
		taken := addr(t, w1, other, "", mac(2))
		_, err = w2.RequestAddress(ctx, ipam.AddressRequest{Pool: other, Address: taken.Addr().String(), Options: map[string]string{ipam.OptMACAddress: mac(3)}})
		wantErr(t, err, errdefs.ErrInUse, "already in use", "host w1")
	})
}

// Hosts registering the same new pool at the same moment all join it
// (swarm nodes creating a node-local network for their first tasks do).
func TestConcurrentSamePool(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := e.host(fmt.Sprintf("h%d", i)).RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.92.0.0/16"})
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		// One key per holder: the pool record, which every allocation
		// checks, is not what every joining host writes.
		var p kv.Pool
		if _, err := kv.GetJSON(ctx, e.store, kv.PoolPath("10.92.0.0/16"), &p); err != nil || len(p.Holders) != 1 || !p.Holders[kv.HoldersInKeys] {
			t.Fatalf("pool %+v %v, want no holder in the record", p, err)
		}
		if h, err := kv.PoolHolders(ctx, e.store, "10.92.0.0/16", p.Holders); err != nil || len(h) != 8 {
			t.Fatalf("holders %v %v, want 8", h, err)
		}
	})
}

// M6: one record that cannot be read (written by hand, by a tool, by another
// version) used to fail every listing it was in, so a bad hosts/ value
// stopped every allocation in every pool. Before the fix RequestAddress
// failed here with "decode hosts/zzz"; now the bad records are skipped,
// logged with their key, and their keys still count (a garbage address
// record keeps its address taken, a garbage block record keeps its block).
// Allocation no longer reads hosts/ or the pool's addresses: the garbage
// host is met by the collection pass.
func TestUnreadableRecordsAreSkipped(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		log, hook := logtest.NewNullLogger()
		a := ipam.New(e.store, ipam.Config{Host: "a", LeaseTTL: time.Hour, Now: e.clock.Now}, log)
		id := pool(t, a, "10.80.0.0/24", "", nil) // blocks of /26
		for _, key := range []string{kv.HostPath("zzz"), kv.AddressPath("10.80.0.0/24", "10.80.0.64"),
			kv.BlockPath("10.80.0.0/24", "10.80.0.0/26"), kv.PoolPath("10.81.0.0/16")} {
			if _, err := e.store.Put(ctx, key, []byte("garbage"), 0); err != nil {
				t.Fatal(err)
			}
		}
		got := addr(t, a, id, "", mac(1))
		if got.String() != "10.80.0.65/32" {
			t.Fatalf("got %s: want the second address of the next block (10.80.0.0/26 has an unreadable owner, 10.80.0.64 an unreadable record)", got)
		}
		if _, err := a.CollectGone(ctx, nil); err != nil {
			t.Fatalf("collection must skip unreadable records: %v", err)
		}
		var warned []string
		for _, entry := range hook.AllEntries() {
			if entry.Level == logrus.WarnLevel {
				warned = append(warned, fmt.Sprint(entry.Data["key"]))
			}
		}
		for _, key := range []string{"hosts/zzz", "addrs/10.80.0.0-24/10.80.0.64", "blocks/10.80.0.0-24/10.80.0.0-26"} {
			if !strings.Contains(strings.Join(warned, " "), key) {
				t.Errorf("no warning names %s (warned: %v)", key, warned)
			}
		}
		if err := a.RenewLeases(ctx); err != nil {
			t.Fatalf("lease renewal must skip unreadable records: %v", err)
		}
		// An unreadable pool record still holds its range.
		_, err := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "10.81.0.0/24"})
		wantErr(t, err, errdefs.ErrInUse, "10.81.0.0/16")
	})
}

// denyingStore refuses every write the way the Consul store reports an ACL
// refusal, and counts the attempts.
type denyingStore struct {
	kv.Store
	mu   sync.Mutex
	puts int
}

func (s *denyingStore) Put(context.Context, string, []byte, uint64) (uint64, error) {
	s.mu.Lock()
	s.puts++
	s.mu.Unlock()
	return 0, fmt.Errorf("put: %w (Permission denied)", kv.ErrDenied)
}

// M12 (and L10): a refused write must end an allocation at once. Taking
// back this host's own expired block swallowed every error as "state
// changed, look again", so a refusal cost 100 full-state reads and ended as
// "too many concurrent allocations: changed concurrently" (this test failed
// with that before the fix); now the refusal is the answer.
func TestRefusedWriteEndsAllocation(t *testing.T) {
	e := env{store: kv.NewMemory(), clock: &clock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}}
	a := e.host("a")
	id := pool(t, a, "10.71.0.0/30", "", nil) // one block
	got := addr(t, a, id, "", mac(1))
	if err := a.ReleaseAddress(ctx, id, got.Addr().String()); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * time.Hour) // a's lease ran out and a never registered: it must take its block back
	deny := &denyingStore{Store: e.store}
	denied := env{store: deny, clock: e.clock}.host("a")
	_, err := denied.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Options: map[string]string{ipam.OptMACAddress: mac(2)}})
	wantErr(t, err, kv.ErrDenied, "Permission denied")
	if errors.Is(err, kv.ErrConflict) || deny.puts != 1 {
		t.Fatalf("want one refused write and no conflict, got %d writes: %v", deny.puts, err)
	}
}

// TestRequestPoolRefusesSpecialRanges: --subnet and --ip-range in or around
// a special range are refused before anything is registered. Before the fix
// every one of these pools was registered and handed out addresses.
func TestRequestPoolRefusesSpecialRanges(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a := e.host("a")
		for _, c := range []struct{ pool, sub, word string }{
			{"0.0.0.0/0", "", "overlaps 0.0.0.0/8"},
			{"127.0.0.0/24", "", "overlaps 127.0.0.0/8"},
			{"169.254.0.0/16", "", "overlaps 169.254.0.0/16"},
			{"224.0.0.0/4", "", "overlaps 224.0.0.0/4"},
			{"255.255.255.0/24", "", "overlaps 240.0.0.0/4"},
			{"0.0.0.0/0", "10.0.0.0/24", "--subnet 0.0.0.0/0"},
		} {
			_, err := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: c.pool, SubPool: c.sub})
			wantErr(t, err, errdefs.ErrInvalid, c.word, "pick a subnet outside it")
		}
		ps, _, err := e.store.List(ctx, kv.PoolsPrefix)
		if err != nil || len(ps) != 0 {
			t.Fatalf("refused pools left records: %v %v", ps, err)
		}
	})
}

// TestAutoPoolSkipsHostRoutes: automatic pools skip candidates the host
// uses (Config.Taken, the host's routes in the plugin) and special ranges
// in AUTO_POOL. Before the fix the first candidate, 10.240.0.0/24, was
// taken even with a host route to 10.240.0.0/23.
func TestAutoPoolSkipsHostRoutes(t *testing.T) {
	route := netip.MustParsePrefix("10.240.0.0/23")
	log := logrus.New()
	log.SetOutput(io.Discard)
	im := ipam.New(kv.NewMemory(), ipam.Config{Host: "a", AutoRange: netip.MustParsePrefix("10.240.0.0/22"), AutoBits: 24,
		Taken: route.Overlaps}, log)
	id, err := im.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace})
	if err != nil || id.CIDR.String() != "10.240.2.0/24" {
		t.Fatalf("automatic pool %v %v, want 10.240.2.0/24", id, err)
	}
	if id, err = im.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace}); err != nil || id.CIDR.String() != "10.240.3.0/24" {
		t.Fatalf("second automatic pool %v %v, want 10.240.3.0/24", id, err)
	}
	_, err = im.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace})
	wantErr(t, err, errdefs.ErrInUse, "10.240.0.0/22", "this host's routes", "give --subnet")

	// An AUTO_POOL over link-local never yields a pool there.
	im = ipam.New(kv.NewMemory(), ipam.Config{Host: "a", AutoRange: netip.MustParsePrefix("169.254.0.0/15"), AutoBits: 24}, log)
	if id, err := im.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace}); err != nil || id.CIDR.String() != "169.255.0.0/24" {
		t.Fatalf("automatic pool %v %v, want 169.255.0.0/24", id, err)
	}
}
