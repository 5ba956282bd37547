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

// The addresses of a host that is gone stayed "used" for good, and
// reclaimed blocks stayed partly full. They are collected once the
// collector has seen the host's registration unrenewed for GoneAfter lease
// lifetimes of its own clock, not before; the host's holder key stays.
func TestCollectGone(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		register(t, e, "a")
		register(t, e, "b")
		id := pool(t, a, "10.82.0.0/24", "", nil)
		pool(t, b, "10.82.0.0/24", "", nil)
		ipB := addr(t, b, id, "", mac(1)).Addr().String()
		ipA := addr(t, a, id, "", mac(2)).Addr().String()
		for _, h := range []string{"a", "b"} { // each host's labelled endpoint
			if _, err := kv.PutJSON(ctx, e.store, kv.EndpointLabelsPath(h, "e-"+h), kv.EndpointLabels{Host: h, Endpoint: "e-" + h, Labels: map[string]string{"app": "x"}}, kv.Any); err != nil {
				t.Fatal(err)
			}
		}
		// a's first pass: what it sees now starts its clock (its witness).
		if got, err := a.CollectGone(ctx, nil); err != nil || got != (ipam.Collected{}) {
			t.Fatalf("collected %+v %v at the first look", got, err)
		}
		e.clock.Add(90 * time.Minute) // b silent for 1.5 lifetimes: not gone yet
		register(t, e, "a")
		if got, err := a.CollectGone(ctx, nil); err != nil || got != (ipam.Collected{}) {
			t.Fatalf("collected %+v %v before b was gone", got, err)
		}
		e.clock.Add(time.Hour) // 2.5 lifetimes
		register(t, e, "a")
		got, err := a.CollectGone(ctx, nil)
		if err != nil || got.Addresses != 1 || got.Blocks != 1 || got.Hosts != 1 {
			t.Fatalf("collected %+v %v, want b's address, block and host record", got, err)
		}
		for k, want := range map[string]error{kv.AddressPath("10.82.0.0/24", ipB): kv.ErrNotFound, kv.AddressPath("10.82.0.0/24", ipA): nil, kv.HostPath("b"): kv.ErrNotFound,
			kv.EndpointLabelsPath("b", "e-b"): kv.ErrNotFound, kv.EndpointLabelsPath("a", "e-a"): nil} {
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

// A gone host's record stays while it holds a block this collector saw
// renewed less than a lease lifetime ago (each block's clock is its own:
// a collector that lists blocks less often than hosts sees a last renewal
// later than the host's): the host and its block go together, at a later
// pass.
func TestGoneHostKeptWithItsYoungBlock(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		register(t, e, "a")
		register(t, e, "b")
		id := pool(t, a, "10.83.0.0/24", "", nil)
		pool(t, b, "10.83.0.0/24", "", nil)
		addr(t, b, id, "", mac(1))
		if got, err := a.CollectGone(ctx, nil); err != nil || got != (ipam.Collected{}) {
			t.Fatalf("collected %+v %v at the first look", got, err)
		}
		e.clock.Add(150 * time.Minute) // b's record unrenewed for 2.5 lifetimes: gone
		register(t, e, "a")
		// b's block renewed last just now, as a's pass sees it.
		var blocks []string
		if _, err := kv.ListJSON(ctx, e.store, kv.BlockPrefix("10.83.0.0/24"), func(key string, ver uint64, bl kv.Block) error {
			if bl.Host == "b" {
				blocks = append(blocks, key)
				bl.Expires = e.clock.Now().Add(time.Hour).UTC()
				_, err := kv.PutJSON(ctx, e.store, key, bl, ver)
				return err
			}
			return nil
		}, nil); err != nil || len(blocks) != 1 {
			t.Fatalf("b's blocks %v: %v", blocks, err)
		}
		got, err := a.CollectGone(ctx, nil)
		if err != nil || got.Blocks != 0 || got.Hosts != 0 {
			t.Fatalf("collected %+v %v, want b's young block and its record kept", got, err)
		}
		if _, err := e.store.Get(ctx, kv.HostPath("b")); err != nil {
			t.Fatalf("b's record removed while it holds %s: %v", blocks[0], err)
		}
		e.clock.Add(time.Hour) // a lifetime since the block's renewal
		register(t, e, "a")
		if got, err := a.CollectGone(ctx, nil); err != nil || got.Blocks != 1 || got.Hosts != 1 {
			t.Fatalf("collected %+v %v, want b's block and record", got, err)
		}
	})
}

// A record of this host's own that no endpoint has (the plugin killed
// between RequestAddress and CreateEndpoint, a reply lost and the request
// sent again, a release Docker gave up on) is released once it is older
// than OrphanAfter; held, young, other hosts' and unlisted pools' records
// stay.
func TestCollectOrphans(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		register(t, e, "a")
		register(t, e, "b")
		id := pool(t, a, "10.83.0.0/24", "", nil)
		pool(t, b, "10.83.0.0/24", "", nil)
		other := pool(t, a, "10.84.0.0/24", "", nil)
		held := addr(t, a, id, "", mac(1)).Addr().String()
		orphan := addr(t, a, id, "", mac(2)).Addr().String()
		ofB := addr(t, b, id, "", mac(3)).Addr().String()
		unlisted := addr(t, a, other, "", mac(4)).Addr().String()
		holding := func() map[string]map[string]bool {
			return map[string]map[string]bool{"10.83.0.0/24": {held: true}}
		}
		e.clock.Add(ipam.OrphanAfter / 2)
		young := addr(t, a, id, "", mac(5)).Addr().String()
		if got, err := a.CollectGone(ctx, holding); err != nil || got != (ipam.Collected{}) {
			t.Fatalf("collected %+v %v before anything was old enough", got, err)
		}
		e.clock.Add(ipam.OrphanAfter/2 + time.Second)
		register(t, e, "a")
		register(t, e, "b")
		got, err := a.CollectGone(ctx, holding)
		if err != nil || got != (ipam.Collected{Orphans: 1}) {
			t.Fatalf("collected %+v %v, want the one orphan", got, err)
		}
		for ip, want := range map[string]error{held: nil, orphan: kv.ErrNotFound, ofB: nil, young: nil} {
			if _, err := e.store.Get(ctx, kv.AddressPath("10.83.0.0/24", ip)); !errors.Is(err, want) && !(want == nil && err == nil) {
				t.Fatalf("%s: %v, want %v", ip, err, want)
			}
		}
		if _, err := e.store.Get(ctx, kv.AddressPath("10.84.0.0/24", unlisted)); err != nil {
			t.Fatalf("a pool the driver does not list was swept: %v", err)
		}
		// The address is free again.
		if got := addr(t, a, id, orphan, mac(6)).Addr().String(); got != orphan {
			t.Fatalf("asked for %s, got %s", orphan, got)
		}
	})
}

// A clock set back after records were written (a host that ran days
// ahead, stepped back by NTP; issue 24's chaos scenario "clock 3 days
// behind") makes this host's records look made in the future: their
// orphans are still released, once this process has listed them for
// OrphanAfter; a held record stays. Before, they stayed until the clock
// caught up with them (days).
func TestCollectOrphansAfterClockSetBack(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a := e.host("a")
		register(t, e, "a")
		id := pool(t, a, "10.85.0.0/24", "", nil)
		held := addr(t, a, id, "", mac(1)).Addr().String()
		orphan := addr(t, a, id, "", mac(2)).Addr().String()
		holding := func() map[string]map[string]bool {
			return map[string]map[string]bool{"10.85.0.0/24": {held: true}}
		}
		e.clock.Add(-72 * time.Hour)
		register(t, e, "a")
		if got, err := a.CollectGone(ctx, holding); err != nil || got != (ipam.Collected{}) {
			t.Fatalf("collected %+v %v at the first look after the clock went back", got, err)
		}
		e.clock.Add(ipam.OrphanAfter + time.Second)
		register(t, e, "a")
		if got, err := a.CollectGone(ctx, holding); err != nil || got != (ipam.Collected{Orphans: 1}) {
			t.Fatalf("collected %+v %v after the orphan was listed for OrphanAfter, want the one orphan", got, err)
		}
		for ip, want := range map[string]error{held: nil, orphan: kv.ErrNotFound} {
			if _, err := e.store.Get(ctx, kv.AddressPath("10.85.0.0/24", ip)); !errors.Is(err, want) && !(want == nil && err == nil) {
				t.Fatalf("%s: %v, want %v", ip, err, want)
			}
		}
	})
}

// Audit H2 (issue 24): a host cut off for longer than GoneAfter lease
// lifetimes is collected; when it comes back it takes its IPv4 and IPv6
// addresses back, and the other holder's ReleasePool leaves the pool alone
// (the returned host's holder key was never collected): its next
// RequestAddress works. Before, the release wiped the pool under the
// returned host's network ("pool … was released").
func TestReturnedHostKeepsItsPool(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		register(t, e, "a")
		register(t, e, "b")
		id := pool(t, a, "10.84.0.0/24", "", nil)
		id6, err := a.RequestPool(ctx, ipam.PoolRequest{Space: ipam.LocalSpace, Pool: "fd00:84::/64", V6: true})
		if err != nil {
			t.Fatal(err)
		}
		pool(t, b, "10.84.0.0/24", "", nil)
		ip := addr(t, a, id, "", mac(1)).Addr().String()
		ip6 := addr(t, a, id6, "", mac(1)).Addr().String()
		if got, err := b.CollectGone(ctx, nil); err != nil || got != (ipam.Collected{}) {
			t.Fatalf("first look: %+v %v", got, err)
		}
		e.clock.Add(150 * time.Minute) // a cut off for 2.5 lease lifetimes
		register(t, e, "b")
		got, err := b.CollectGone(ctx, nil)
		if err != nil || got.Addresses != 2 || got.Blocks != 2 || got.Hosts != 1 {
			t.Fatalf("collected %+v %v, want a's two addresses, two blocks and its record", got, err)
		}
		// a comes back: registers, takes back what it uses.
		register(t, e, "a")
		for _, p := range []ipam.PoolID{id, id6} {
			if err := a.ReassertHolder(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Reassert(ctx, id, ip, mac(1)); err != nil {
			t.Fatal(err)
		}
		if err := a.Reassert(ctx, id6, ip6, mac(1)); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{kv.AddressPath("10.84.0.0/24", ip), kv.AddressPath("fd00:84::/64", ip6)} {
			var rec kv.Address
			if _, err := kv.GetJSON(ctx, e.store, k, &rec); err != nil || rec.Host != "a" {
				t.Fatalf("%s after a came back: %+v %v", k, rec, err)
			}
		}
		// Its blocks, free since the collection, are its own again.
		var blocks []string
		for _, p := range []string{"10.84.0.0/24", "fd00:84::/64"} {
			if _, err := kv.ListJSON(ctx, e.store, kv.BlockPrefix(p), func(_ string, _ uint64, b kv.Block) error {
				if b.Host == "a" {
					blocks = append(blocks, b.CIDR)
				}
				return nil
			}, nil); err != nil {
				t.Fatal(err)
			}
		}
		if len(blocks) != 2 {
			t.Fatalf("a's blocks after it came back: %v", blocks)
		}
		if err := b.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, kv.PoolPath("10.84.0.0/24")); err != nil {
			t.Fatalf("the pool after b released it, a still holding it: %v", err)
		}
		if got := addr(t, a, id, "", mac(2)); !got.IsValid() {
			t.Fatal("no address for a's next container")
		}
	})
}

// A holder key removed by a bug or a hand is written again; for a pool
// that is gone, ReassertHolder says to make the network again.
func TestReassertHolder(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		a, b := e.host("a"), e.host("b")
		id := pool(t, a, "10.85.0.0/24", "", nil)
		pool(t, b, "10.85.0.0/24", "", nil)
		holder := kv.HolderPath("10.85.0.0/24", "a/"+ipam.LocalSpace)
		if err := e.store.Delete(ctx, holder, 0); err != nil {
			t.Fatal(err)
		}
		if err := a.ReassertHolder(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, holder); err != nil {
			t.Fatalf("holder key not written again: %v", err)
		}
		if err := b.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.Get(ctx, kv.PoolPath("10.85.0.0/24")); err != nil {
			t.Fatalf("pool released under a: %v", err)
		}
		if err := a.ReleasePool(ctx, id); err != nil {
			t.Fatal(err)
		}
		wantErr(t, a.ReassertHolder(ctx, id), nil, "10.85.0.0/24", "was released", "create it again")
	})
}

// A host back from a long partition finds its address's block taken by
// another host meanwhile: its address comes back with its route exception
// at once (the other hosts route it there), not at the next collection;
// a block nobody took comes back to it.
func TestReassertInAnotherHostsBlock(t *testing.T) {
	forEachStore(t, func(t *testing.T, e env) {
		const cidr = "10.84.0.0/24"
		a, b := e.host("a"), e.host("b")
		register(t, e, "a")
		register(t, e, "b")
		id := pool(t, a, cidr, "", nil)
		pool(t, b, cidr, "", nil)
		ipB := addr(t, b, id, "", mac(1)).Addr().String()
		ipB2 := addr(t, b, id, "", mac(2)).Addr().String()
		var blocks []kv.Block
		if _, err := kv.ListJSON(ctx, e.store, kv.BlockPrefix(cidr), func(_ string, _ uint64, blk kv.Block) error {
			blocks = append(blocks, blk)
			return nil
		}, nil); err != nil || len(blocks) != 1 || blocks[0].Host != "b" {
			t.Fatalf("blocks: %+v %v", blocks, err)
		}
		// b collected while away: its records and block go, and a takes
		// the block.
		for _, ip := range []string{ipB, ipB2} {
			if err := e.store.Delete(ctx, kv.AddressPath(cidr, ip), 0); err != nil {
				t.Fatal(err)
			}
		}
		taken := kv.Block{CIDR: blocks[0].CIDR, Pool: cidr, Host: "a", Expires: e.clock.Now().Add(time.Hour).UTC()}
		if _, err := kv.PutJSON(ctx, e.store, kv.BlockPath(cidr, blocks[0].CIDR), taken, kv.Any); err != nil {
			t.Fatal(err)
		}
		if err := b.Reassert(ctx, id, ipB, mac(1)); err != nil {
			t.Fatal(err)
		}
		var exc kv.Address
		if _, err := kv.GetJSON(ctx, e.store, kv.ExceptionPath(cidr, ipB), &exc); err != nil || exc.Host != "b" || exc.IP != ipB {
			t.Fatalf("the route exception of %s in a's block: %+v %v", ipB, exc, err)
		}
		// The block freed instead: b takes it back, and no exception is
		// needed.
		if err := e.store.Delete(ctx, kv.BlockPath(cidr, blocks[0].CIDR), 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Reassert(ctx, id, ipB2, mac(2)); err != nil {
			t.Fatal(err)
		}
		var blk kv.Block
		if _, err := kv.GetJSON(ctx, e.store, kv.BlockPath(cidr, blocks[0].CIDR), &blk); err != nil || blk.Host != "b" {
			t.Fatalf("the freed block is not b's again: %+v %v", blk, err)
		}
	})
}
