package routing

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing/routingtest"
	"github.com/tartan-net/tartan/kv"
)

var testUnderlay = kernel.Underlay{Interface: "eth1", Address: netip.MustParseAddr("10.98.0.11"), Prefix: netip.MustParsePrefix("10.98.0.0/24")}

func startRouter(t *testing.T, store kv.Store, nets ...Network) (*Router, *routingtest.Kernel) {
	t.Helper()
	return startRouterWith(t, store, Config{}, nets...)
}

// startRouterWith is startRouter with cfg's TTL and Liveness.
func startRouterWith(t *testing.T, store kv.Store, cfg Config, nets ...Network) (*Router, *routingtest.Kernel) {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	k := routingtest.New()
	r := New(store, k, Config{Host: "a", Gap: time.Millisecond, Log: log, TTL: cfg.TTL, Liveness: cfg.Liveness,
		Underlay: func() (kernel.Underlay, error) { return testUnderlay, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	r.Start(ctx)
	for _, n := range nets {
		r.Add(n)
	}
	t.Cleanup(func() {
		for _, n := range nets {
			r.Remove(n.ID)
		}
		cancel()
	})
	return r, k
}

// waitPlan waits until the network's plan satisfies ok.
func waitPlan(t *testing.T, r *Router, id string, ok func(Plan) bool) Plan {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		p, have := r.Plan(id)
		if have && ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("plan of %s never came right; last: %+v (have %v)", id, p, have)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func txn(t *testing.T, store kv.Store, ops ...kv.Op) {
	t.Helper()
	if _, err := store.Txn(context.Background(), ops); err != nil {
		t.Fatal(err)
	}
}

func put(t *testing.T, store kv.Store, key, value string) {
	t.Helper()
	if _, err := store.Put(context.Background(), key, []byte(value), 0); err != nil {
		t.Fatal(err)
	}
}

// M6: one record that did not decode used to fail the peer snapshot ("peer
// sync (working state kept)"), so one bad hosts/ value froze every
// network's peers on every host. Now the bad record is left out and named in
// the plan's problems. H2: the pool record's block size is carried into the
// plan, so that blocks of another size are refused.
func TestRouterSkipsUnreadableRecords(t *testing.T) {
	store := kv.NewMemory()
	pool := "10.244.0.0/16"
	put(t, store, kv.PoolPath(pool), `{"cidr":"10.244.0.0/16","blockBits":26}`)
	put(t, store, kv.HostPath("a"), `{"id":"a","address":"10.98.0.11","renewed":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.HostPath("b"), `{"id":"b","address":"10.98.0.12","renewed":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.HostPath("zzz"), "garbage")
	put(t, store, kv.BlockPath(pool, "10.244.0.64/26"), `{"cidr":"10.244.0.64/26","host":"b","expires":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.BlockPath(pool, "10.244.1.0/24"), `{"cidr":"10.244.1.0/24","host":"b","expires":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.BlockPath(pool, "10.244.0.128/26"), "{")
	put(t, store, kv.ExceptionPath(pool, "10.244.0.70"), "[]")
	r, k := startRouter(t, store, Network{ID: "n1", Pool: netip.MustParsePrefix(pool), Device: "tartan.7", Peering: devicePeering{"tartan.7"}})
	plan := waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 1 })
	problems := strings.Join(plan.Problems, "\n")
	for _, want := range []string{"hosts/zzz", "blocks/10.244.0.0-16/10.244.0.128-26", "routes/10.244.0.0-16/10.244.0.70", `"10.244.1.0/24" of host b ignored: pool 10.244.0.0/16 has /26 blocks`} {
		if !strings.Contains(problems, want) {
			t.Errorf("problems do not name %s:\n%s", want, problems)
		}
	}
	if _, ok := k.Routes()[netip.MustParsePrefix("10.244.0.64/26")]; !ok {
		t.Fatalf("the kernel lacks the planned route: %v", k.Routes())
	}

	// A pool record that cannot be read is a problem too, and the blocks
	// are then checked against the pool alone.
	put(t, store, kv.PoolPath("10.245.0.0/16"), "garbage")
	r.Add(Network{ID: "n2", Pool: netip.MustParsePrefix("10.245.0.0/16"), Peering: underlayPeering{}})
	defer r.Remove("n2")
	plan = waitPlan(t, r, "n2", func(Plan) bool { return true })
	if !strings.Contains(strings.Join(plan.Problems, "\n"), "pools/10.245.0.0-16") {
		t.Fatalf("problems: %q", plan.Problems)
	}
}

// The watches' answers are the caches and the kernel gets differences: a
// new block (seen in the block feed, not in a new listing of every block)
// costs one route write and no dump of the kernel's tables; a released one,
// one delete. A host whose own registration is missing from
// the listing plans nothing.
func TestRouterAppliesDifferences(t *testing.T) {
	store := kv.NewMemory()
	pool := "10.244.0.0/16"
	put(t, store, kv.PoolPath(pool), `{"cidr":"10.244.0.0/16","blockBits":26}`)
	put(t, store, kv.HostPath("b"), `{"id":"b","address":"10.98.0.12","renewed":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.BlockPath(pool, "10.244.0.64/26"), `{"cidr":"10.244.0.64/26","host":"b","expires":"2099-01-01T00:00:00Z"}`)
	r, k := startRouter(t, store, Network{ID: "n1", Pool: netip.MustParsePrefix(pool), Device: "tartan.7", Peering: devicePeering{"tartan.7"}})
	time.Sleep(100 * time.Millisecond)
	if _, ok := r.Plan("n1"); ok || len(k.Routes()) != 0 {
		t.Fatalf("planned without this host's own registration: %v", k.Routes())
	}
	if peers, complete := r.VXLANPeers(); complete || len(peers) != 0 {
		t.Fatalf("VXLAN peers before the plan: %v, complete %v", peers, complete)
	}
	put(t, store, kv.HostPath("a"), `{"id":"a","address":"10.98.0.11","renewed":"2099-01-01T00:00:00Z"}`)
	waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 1 })
	if peers, complete := r.VXLANPeers(); !complete || len(peers) != 1 || peers[0].String() != "10.98.0.12" {
		t.Fatalf("VXLAN peers: %v, complete %v", peers, complete)
	}
	before := k.Ops()
	// Block changes come through the feed, in the transaction that makes
	// them (as the IPAM writes them).
	blk := `{"cidr":"10.244.0.128/26","host":"b","expires":"2099-01-01T00:00:00Z"}`
	txn(t, store, kv.Op{Key: kv.BlockPath(pool, "10.244.0.128/26"), Value: []byte(blk)},
		kv.Op{Key: kv.BlockFeedPath(pool, "10.244.0.128/26"), Value: []byte(`{"block":` + blk + `}`), Version: kv.Any})
	waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 2 })
	after := k.Ops()
	if after.Dumps != before.Dumps || after.Writes-before.Writes != 1 {
		t.Fatalf("a new block cost %d writes and %d dumps; want 1 and 0", after.Writes-before.Writes, after.Dumps-before.Dumps)
	}
	gone := `{"cidr":"10.244.0.64/26","host":"b"}`
	txn(t, store, kv.Op{Key: kv.BlockPath(pool, "10.244.0.64/26"), Delete: true},
		kv.Op{Key: kv.BlockFeedPath(pool, "10.244.0.64/26"), Value: []byte(`{"block":` + gone + `,"deleted":true}`), Version: kv.Any})
	waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 1 })
	if _, ok := k.Routes()[netip.MustParsePrefix("10.244.0.64/26")]; ok {
		t.Fatal("the released block's route stayed")
	}
	// Repair puts back what was removed behind the router's back.
	_ = k.DeleteRoute(kernel.Route{Dst: netip.MustParsePrefix("10.244.0.128/26")})
	if err := r.Repair(); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.Routes()[netip.MustParsePrefix("10.244.0.128/26")]; !ok {
		t.Fatal("repair did not restore the route")
	}
}

// Issue 10: liveness is renewed under renewals/, which is read every
// Liveness, not watched; issue 24: it is timed by this host's clock, not by
// what hosts write. Hosts b and c wrote their records two days ago (b's
// clock, or c's, may be wrong); b keeps renewing, c does not: once a lease
// lifetime passed since the router first saw them, b's borrowed address is
// routed and c's is not.
func TestRouterReadsRenewals(t *testing.T) {
	store := kv.NewMemory()
	pool := "10.244.0.0/16"
	old := time.Now().Add(-48 * time.Hour)
	put(t, store, kv.PoolPath(pool), `{"cidr":"10.244.0.0/16","blockBits":26}`)
	put(t, store, kv.HostPath("a"), `{"id":"a","address":"10.98.0.11","renewed":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.HostPath("b"), `{"id":"b","address":"10.98.0.12","renewed":"`+old.UTC().Format(time.RFC3339)+`","renewals":true}`)
	put(t, store, kv.HostPath("c"), `{"id":"c","address":"10.98.0.13","renewed":"`+old.UTC().Format(time.RFC3339)+`","renewals":true}`)
	put(t, store, kv.RenewalPath("c"), `{"renewed":"`+old.UTC().Format(time.RFC3339)+`"}`)
	put(t, store, kv.ExceptionPath(pool, "10.244.0.5"), `{"ip":"10.244.0.5","host":"b","kind":"endpoint"}`)
	put(t, store, kv.ExceptionPath(pool, "10.244.0.6"), `{"ip":"10.244.0.6","host":"c","kind":"endpoint"}`)
	renew := func(i int) error {
		_, err := store.Put(context.Background(), kv.RenewalPath("b"), fmt.Appendf(nil, `{"renewed":"%s"}`, old.Add(time.Duration(i)*time.Second).UTC().Format(time.RFC3339)), kv.Any)
		return err
	}
	if err := renew(0); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // b renews, by its clock two days behind
		defer close(done)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				_ = renew(i) // a failed renewal shows as c's: b's address unrouted
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	r, _ := startRouterWith(t, store, Config{TTL: 500 * time.Millisecond, Liveness: 20 * time.Millisecond}, Network{ID: "n1", Pool: netip.MustParsePrefix(pool), Peering: underlayPeering{}})
	waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 2 }) // first sight: both
	plan := waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 1 })
	if got := routes(plan); got != "10.244.0.5/32 via 10.98.0.12 dev eth1" {
		t.Fatalf("routes: %s (want b's address only: c stopped renewing)", got)
	}
}

// A plan is computed again when a lease it depends on runs out (Plan.Next),
// not on a fixed period: a silent host's block leaves the plan a lease
// lifetime after the router first saw it, with nothing written to the store
// (what its lease says it expires at decides nothing).
func TestRouterReplansWhenALeaseEnds(t *testing.T) {
	store := kv.NewMemory()
	pool := "10.244.0.0/16"
	old := time.Now().Add(-48 * time.Hour).UTC().Format(time.RFC3339)
	put(t, store, kv.PoolPath(pool), `{"cidr":"10.244.0.0/16","blockBits":26}`)
	put(t, store, kv.HostPath("a"), `{"id":"a","address":"10.98.0.11","renewed":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.HostPath("b"), `{"id":"b","address":"10.98.0.12","renewed":"`+old+`"}`)
	put(t, store, kv.BlockPath(pool, "10.244.0.64/26"), `{"cidr":"10.244.0.64/26","pool":"10.244.0.0/16","host":"b","expires":"2099-01-01T00:00:00Z"}`)
	r, _ := startRouterWith(t, store, Config{TTL: 1500 * time.Millisecond, Liveness: time.Hour}, Network{ID: "n1", Pool: netip.MustParsePrefix(pool), Peering: underlayPeering{}})
	plan := waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 1 })
	if plan.Next.IsZero() {
		t.Fatal("the plan does not say when its block's lease ends")
	}
	waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 0 })
}

// watchCounter is a store that counts the watches in flight per prefix.
type watchCounter struct {
	kv.Store
	mu      sync.Mutex
	now     map[string]int
	maxSeen int
}

func (w *watchCounter) Watch(ctx context.Context, prefix string, index uint64) ([]kv.Pair, uint64, error) {
	w.mu.Lock()
	w.now[prefix]++
	total := 0
	for _, n := range w.now {
		total += n
	}
	w.maxSeen = max(w.maxSeen, total)
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.now[prefix]--
		w.mu.Unlock()
	}()
	return w.Store.Watch(ctx, prefix, index)
}

// Issue 24, audit M7: a host held two blocking queries per pool (its block
// feed and its route exceptions), each a connection to Consul, whose
// agents allow 200 per client address: a host with 100 networks had none
// left. Now a host watches every pool's feed and every pool's exceptions
// once: 3 watches (with hosts/) for 1 network or 100, and each network
// still gets its own pool's exceptions.
func TestRouterWatchesPerHostNotPerNetwork(t *testing.T) {
	store := &watchCounter{Store: kv.NewMemory(), now: map[string]int{}}
	put(t, store, kv.HostPath("a"), `{"id":"a","address":"10.98.0.11","renewed":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.HostPath("b"), `{"id":"b","address":"10.98.0.12","renewed":"2099-01-01T00:00:00Z"}`)
	var nets []Network
	for i := 0; i < 100; i++ {
		pool := fmt.Sprintf("10.%d.0.0/16", 100+i)
		put(t, store, kv.PoolPath(pool), fmt.Sprintf(`{"cidr":%q,"blockBits":26}`, pool))
		n := vxlanNet(pool)
		n.ID = fmt.Sprintf("n%d", i)
		nets = append(nets, n)
	}
	// An address of pool 57 that lives on b, away from any block.
	txn(t, store, kv.Op{Key: kv.ExceptionPath("10.157.0.0/16", "10.157.0.9"), Value: []byte(`{"ip":"10.157.0.9","host":"b","kind":"endpoint"}`)})
	r, _ := startRouter(t, store, nets...)
	p := waitPlan(t, r, "n57", func(p Plan) bool { return len(p.Routes) == 1 })
	if got := routes(p); got != "10.157.0.9/32 via 10.98.0.12 dev tartan.7 onlink" {
		t.Fatalf("n57's routes: %s", got)
	}
	for _, id := range []string{"n0", "n99"} {
		if p := waitPlan(t, r, id, func(Plan) bool { return true }); len(p.Routes) != 0 {
			t.Fatalf("%s got another pool's exception: %s", id, routes(p))
		}
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.maxSeen > 3 {
		t.Fatalf("%d watches at once for 100 networks (%d prefixes), want 3: hosts, every pool's block feed, every pool's exceptions", store.maxSeen, len(store.now))
	}
}
