// Package routing keeps the cross-host state of this host's routed networks
// (every backend that routes to other hosts): it follows the store with one watch per prefix per host
// (hosts/ once, and each pool's blocks and route exceptions once, whatever
// the number of networks), keeps what each watch returns as its cache, plans
// every network from the caches (Compute, no I/O) and applies the difference
// from the last plan to the kernel (Update); a full apply with a dump of the
// kernel's tables (Apply) is for the first time and for Repair.
//
// Nothing here holds a lock while it calls the store or the kernel: each
// network has one writer goroutine, and Repair takes the same per-network
// turn.
package routing

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

// Config holds what the router needs of its host.
type Config struct {
	Host string        // this host's ID
	TTL  time.Duration // a host silent this long is gone (its blocks too)
	// Replan is the longest a plan goes without being computed again when
	// nothing changes; it is computed again sooner when a lease or a host's
	// liveness it depends on runs out (Plan.Next).
	Replan time.Duration
	// Gap is the least time between two reads of one watched prefix, so
	// that a busy prefix costs the store a bounded rate of queries per host
	// (one more Gap for every 64 keys it returned, at most 20).
	Gap time.Duration
	// Liveness is how often the hosts' renewals are read (they change on
	// the scale of the lease lifetime and are not watched); default: an
	// eighth of TTL, at most five minutes.
	Liveness time.Duration
	// Relist is how often each pool's whole block list is read (changes
	// come through the block feed; this picks up lease renewals and
	// anything a feed entry missed).
	Relist time.Duration
	// Underlay finds the host's underlay interface and address.
	Underlay func() (kernel.Underlay, error)
	// OnPeers is called, without any lock held, after the VXLAN peer set of
	// a network changed (the firewall admits VXLAN from peers only) or its
	// WireGuard peers did (Tunnels), and after such a network is removed.
	// It must not block.
	OnPeers func()
	// Witness times the hosts' renewals and the blocks' leases on this
	// host's clock (kv.Witness); one per process, shared with the IPAM.
	// Default: a new one.
	Witness *kv.Witness
	// Now is this host's clock, the one its witness is fed with (nil:
	// time.Now).
	Now func() time.Time
	// Local says whether an address is one of this host's endpoints' (nil:
	// none is); called without the router's lock.
	Local func(netip.Addr) bool
	Log   logrus.FieldLogger
}

// Router is the routing of one host.
type Router struct {
	store kv.Store
	k     Kernel
	cfg   Config

	mu    sync.Mutex
	ctx   context.Context // nil until Start
	hosts *hostsCache
	pools map[netip.Prefix]*poolCache
	nets  map[string]*netWatch
}

// hostsCache is the hosts/ prefix as its watch last returned it.
type hostsCache struct {
	cancel   context.CancelFunc
	ready    bool
	hosts    map[string]kv.Host
	problems []string
	renewals map[string]time.Time // read every Liveness, not watched
}

// poolCache is a pool's blocks and route exceptions, shared by every network
// of the host on that pool. The blocks come from a listing of the pool's
// blocks (at start and every Relist) with the block feed's recent changes
// laid over it (kv.BlockFeedPrefix): every entry newer than what the cache
// holds for its block wins.
type poolCache struct {
	users                 int
	cancel                context.CancelFunc
	relist                chan struct{}
	blocksReady, excReady bool
	byKey                 map[string]versioned // blocks by key (under the pool's prefix)
	feed                  []kv.Pair            // the feed's last listing
	blocks                []kv.Block
	exceptions            []kv.Address
	blockBits             int
	bitsKnown             bool
	blockProblems         []string
	excProblems           []string
	poolProblem           string
}

// versioned is a block as of a version; gone: removed at that version.
type versioned struct {
	version uint64
	block   kv.Block
	gone    bool
}

// netWatch is one network's writer: its goroutine plans and applies.
type netWatch struct {
	n      Network
	poke   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
	// turn is held while the kernel is changed for the network (by its
	// goroutine or by Repair); applied is then what the kernel holds, nil
	// when unknown (next time: a full Apply).
	turn    sync.Mutex
	applied *Plan
	plan    *Plan // the last plan computed, under Router.mu
	memo    Memo  // the writer's own
	memo6   Memo  // the IPv6 pool's, on a dual-stack network
}

// New returns a router; Start runs it.
func New(store kv.Store, k Kernel, cfg Config) *Router {
	if cfg.TTL == 0 {
		cfg.TTL = kv.DefaultLeaseTTL
	}
	if cfg.Replan == 0 {
		cfg.Replan = 5 * time.Minute
	}
	if cfg.Gap == 0 {
		cfg.Gap = 100 * time.Millisecond
	}
	if cfg.Liveness == 0 {
		// Renewals are written every TTL/4 (plugin.RenewAfter): read at
		// twice that pace, none looks older than TTL/2 while its host lives.
		cfg.Liveness = min(5*time.Minute, cfg.TTL/8)
	}
	if cfg.Relist == 0 {
		cfg.Relist = 5 * time.Minute
	}
	if cfg.OnPeers == nil {
		cfg.OnPeers = func() {}
	}
	if cfg.Witness == nil {
		cfg.Witness = kv.NewWitness()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = logrus.StandardLogger()
	}
	return &Router{store: store, k: k, cfg: cfg, pools: map[netip.Prefix]*poolCache{}, nets: map[string]*netWatch{}}
}

// Start runs the watches of the networks added so far and of those added
// later, until ctx ends.
func (r *Router) Start(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ctx = ctx
	for _, w := range r.nets {
		r.runLocked(w)
	}
}

// Add starts routing a network (again, if it changed).
func (r *Router) Add(n Network) {
	r.mu.Lock()
	if w, ok := r.nets[n.ID]; ok {
		if w.n == n {
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		r.Remove(n.ID)
		r.mu.Lock()
	}
	w := &netWatch{n: n, poke: make(chan struct{}, 1)}
	r.nets[n.ID] = w
	r.runLocked(w)
	r.mu.Unlock()
}

// runLocked starts a network's goroutine and the watches it needs, once the
// router runs. Called with r.mu held.
func (r *Router) runLocked(w *netWatch) {
	if r.ctx == nil || w.cancel != nil {
		return
	}
	if r.hosts == nil {
		ctx, cancel := context.WithCancel(r.ctx)
		r.hosts = &hostsCache{cancel: cancel}
		go r.follow(ctx, kv.HostsPrefix, r.hostsListed)
		go r.readRenewals(ctx)
	}
	for _, pool := range w.n.poolList() {
		r.watchPoolLocked(pool)
	}
	ctx, cancel := context.WithCancel(r.ctx)
	w.cancel, w.done = cancel, make(chan struct{})
	go r.run(ctx, w)
	w.pokeNow()
}

// watchPoolLocked counts one more user of a pool's cache, and starts its
// watches for the first. Called with r.mu held.
func (r *Router) watchPoolLocked(pool netip.Prefix) {
	pc, ok := r.pools[pool]
	if !ok {
		ctx, cancel := context.WithCancel(r.ctx)
		pc = &poolCache{cancel: cancel, relist: make(chan struct{}, 1), byKey: map[string]versioned{}}
		r.pools[pool] = pc
		go r.listBlocks(ctx, pool, pc.relist)
		go r.followWith(ctx, kv.BlockFeedPrefix(pool.String()), func(ps []kv.Pair) { r.feedListed(pool, ps) }, func() {
			// The feed went unwatched for a while: entries may have
			// come and gone; read the blocks again.
			select {
			case pc.relist <- struct{}{}:
			default:
			}
		})
		go r.follow(ctx, kv.ExceptionPrefix(pool.String()), func(ps []kv.Pair) { r.exceptionsListed(pool, ps) })
	}
	pc.users++
}

// poolList is the network's pools: its IPv4 pool, and its IPv6 pool when
// it is dual-stack.
func (n Network) poolList() []netip.Prefix {
	if n.Pool6.IsValid() {
		return []netip.Prefix{n.Pool, n.Pool6}
	}
	return []netip.Prefix{n.Pool}
}

// Remove stops routing a network and waits until its writer has stopped.
// The kernel entries stay: they go with the network's device, and the
// driver's reconcile removes peer routes outside its networks' pools.
func (r *Router) Remove(id string) {
	r.mu.Lock()
	w, ok := r.nets[id]
	if !ok {
		r.mu.Unlock()
		return
	}
	delete(r.nets, id)
	if w.cancel != nil {
		w.cancel()
		for _, pool := range w.n.poolList() {
			if pc := r.pools[pool]; pc != nil {
				if pc.users--; pc.users == 0 {
					pc.cancel()
					delete(r.pools, pool)
				}
			}
		}
		if len(r.nets) == 0 && r.hosts != nil {
			r.hosts.cancel()
			r.hosts = nil
		}
	}
	r.mu.Unlock()
	if w.done != nil {
		<-w.done
	}
	if w.n.Device != "" || w.n.Tunnel != "" {
		r.cfg.OnPeers() // its VXLAN or WireGuard peers are no longer anyone's
	}
}

func (w *netWatch) pokeNow() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// follow hands every changed listing of prefix to listed (kv.Follow).
// Errors only delay: they never remove the cache.
func (r *Router) follow(ctx context.Context, prefix string, listed func([]kv.Pair)) {
	r.followWith(ctx, prefix, listed, nil)
}

// followWith is follow that calls gap, if set, when an answer comes after
// the prefix went unwatched for longer than half the feed retention.
func (r *Router) followWith(ctx context.Context, prefix string, listed func([]kv.Pair), gap func()) {
	kv.Follow(ctx, r.store, prefix, kv.FollowOptions{Gap: r.gap, Late: gap, LateAfter: kv.FeedRetention / 2,
		Failed: func(err error) { r.cfg.Log.WithField("prefix", prefix).Debugf("watch: %v", err) }}, listed)
}

// gap is the pause before a watch is asked again, longer the more it
// returned: a prefix that changes all the time (a burst of claims fills the
// block feed) is read at a bounded byte rate per host, a quiet one at once.
func (r *Router) gap(listed int) time.Duration {
	return min(r.cfg.Gap*time.Duration(1+listed/64), 20*r.cfg.Gap)
}

func (r *Router) hostsListed(ps []kv.Pair) {
	hosts := map[string]kv.Host{}
	var problems []string
	_ = kv.DecodeJSON(r.store, ps, func(_ string, _ uint64, h kv.Host) error {
		hosts[h.ID] = h
		return nil
	}, func(e *kv.DecodeError) { problems = append(problems, e.Error()) })
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hosts == nil {
		return
	}
	r.hosts.ready, r.hosts.hosts, r.hosts.problems = true, hosts, problems
	for _, w := range r.nets {
		w.pokeNow()
	}
}

// readRenewals reads the hosts' liveness renewals now and every Liveness.
func (r *Router) readRenewals(ctx context.Context) {
	last := ""
	for {
		renewals, err := kv.ReadRenewals(ctx, r.store, func(e *kv.DecodeError) {
			r.cfg.Log.WithField("key", e.Key).Warnf("ignoring a record: %v", e)
		})
		if err == nil {
			if fp := fmt.Sprint(renewals); fp != last {
				last = fp
				r.mu.Lock()
				if r.hosts != nil {
					r.hosts.renewals = renewals
					for _, w := range r.nets {
						w.pokeNow()
					}
				}
				r.mu.Unlock()
			}
		} else if ctx.Err() == nil {
			r.cfg.Log.Debugf("read renewals: %v", err)
		}
		if !kv.Sleep(ctx, r.cfg.Liveness) {
			return
		}
	}
}

// listBlocks reads the pool's whole block list now, every Relist, and when
// asked on relist.
func (r *Router) listBlocks(ctx context.Context, pool netip.Prefix, relist chan struct{}) {
	backoff := time.Second
	for {
		ps, _, err := r.store.List(ctx, kv.BlockPrefix(pool.String()))
		wait := r.cfg.Relist
		if err == nil {
			r.blocksListed(ctx, pool, ps)
			backoff = time.Second
		} else {
			if ctx.Err() != nil {
				return
			}
			r.cfg.Log.WithField("pool", pool).Debugf("list blocks: %v", err)
			wait, backoff = backoff, min(2*backoff, 10*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-relist:
		case <-t.C:
		}
		t.Stop()
	}
}

func (r *Router) blocksListed(ctx context.Context, pool netip.Prefix, ps []kv.Pair) {
	byKey := map[string]versioned{}
	var problems []string
	prefix := kv.BlockPrefix(pool.String())
	_ = kv.DecodeJSON(r.store, ps, func(key string, ver uint64, b kv.Block) error {
		byKey[strings.TrimPrefix(key, prefix)] = versioned{version: ver, block: b}
		return nil
	}, func(e *kv.DecodeError) { problems = append(problems, e.Error()) })
	r.mu.Lock()
	pc := r.pools[pool]
	known := pc != nil && pc.bitsKnown
	r.mu.Unlock()
	// The pool record says how large its blocks are (it never changes); a
	// block record of another size is not one the IPAM made.
	bits, bitsKnown, poolProblem := 0, known, ""
	if !known {
		var p kv.Pool
		var derr *kv.DecodeError
		_, err := kv.GetJSON(ctx, r.store, kv.PoolPath(pool.String()), &p)
		switch {
		case err == nil && p.BlockBits >= pool.Bits() && p.BlockBits <= pool.Addr().BitLen():
			bits, bitsKnown = p.BlockBits, true
		case err == nil:
			poolProblem = fmt.Sprintf("pool record %s has block size /%d, which does not fit the pool: blocks are checked against the pool alone", pool, p.BlockBits)
		case errors.As(err, &derr):
			poolProblem = derr.Error()
		}
		// Released, or the store is down: blocks are checked against the
		// pool alone until a later listing reads the record.
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if pc = r.pools[pool]; pc == nil {
		return
	}
	if !pc.bitsKnown {
		pc.blockBits, pc.bitsKnown = bits, bitsKnown
	}
	pc.byKey = byKey
	pc.overlayLocked(r.store, pool, true)
	pc.blocksReady, pc.blockProblems, pc.poolProblem = true, problems, poolProblem
	r.pokePoolLocked(pool)
}

// feedListed lays the block feed's entries over the pool's blocks.
func (r *Router) feedListed(pool netip.Prefix, ps []kv.Pair) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pc := r.pools[pool]
	if pc == nil {
		return
	}
	pc.feed = ps
	if pc.overlayLocked(r.store, pool, false) && pc.blocksReady {
		r.pokePoolLocked(pool)
	}
}

// overlayLocked applies the feed's entries that are newer than what the
// cache holds for their block, rebuilds the block list (always, with
// rebuild) and says whether it changed. Called with r.mu held.
func (pc *poolCache) overlayLocked(store kv.Store, pool netip.Prefix, rebuild bool) bool {
	prefix := kv.BlockFeedPrefix(pool.String())
	changed := rebuild
	_ = kv.DecodeJSON(store, pc.feed, func(key string, ver uint64, c kv.BlockChange) error {
		k := strings.TrimPrefix(key, prefix)
		if cur, ok := pc.byKey[k]; ok && cur.version >= ver {
			return nil
		}
		pc.byKey[k] = versioned{version: ver, block: c.Block, gone: c.Deleted}
		changed = true
		return nil
	}, func(*kv.DecodeError) {})
	if !changed {
		return false
	}
	blocks := make([]kv.Block, 0, len(pc.byKey))
	for _, v := range pc.byKey {
		if !v.gone {
			b := v.block
			b.Pool = pool.String() // the pool it is listed under (the witness's key)
			blocks = append(blocks, b)
		}
	}
	pc.blocks = blocks
	return true
}

func (r *Router) exceptionsListed(pool netip.Prefix, ps []kv.Pair) {
	var exc []kv.Address
	var problems []string
	_ = kv.DecodeJSON(r.store, ps, func(_ string, _ uint64, a kv.Address) error {
		exc = append(exc, a)
		return nil
	}, func(e *kv.DecodeError) { problems = append(problems, e.Error()) })
	r.mu.Lock()
	defer r.mu.Unlock()
	pc := r.pools[pool]
	if pc == nil {
		return
	}
	pc.excReady, pc.exceptions, pc.excProblems = true, exc, problems
	r.pokePoolLocked(pool)
}

func (r *Router) pokePoolLocked(pool netip.Prefix) {
	for _, w := range r.nets {
		if w.n.Pool == pool || w.n.Pool6 == pool {
			w.pokeNow()
		}
	}
}

// viewLocked is a network's view from the caches, or false until every
// watch it needs has answered once. Called with r.mu held.
func (r *Router) viewLocked(pool netip.Prefix) (View, bool) {
	pc := r.pools[pool]
	if r.hosts == nil || !r.hosts.ready || pc == nil || !pc.blocksReady || !pc.excReady {
		return View{}, false
	}
	v := View{Hosts: r.hosts.hosts, Blocks: pc.blocks, Exceptions: pc.exceptions, BlockBits: pc.blockBits}
	live := kv.Liveness{Hosts: r.hosts.hosts, Now: r.cfg.Now()}
	live.Observe(r.cfg.Witness, r.hosts.renewals)
	live.ObserveBlocks(r.cfg.Witness, pc.blocks)
	v.Seen, v.BlockSeen = live.Seen, live.BlockSeen
	v.Problems = slices.Concat(r.hosts.problems, pc.blockProblems, pc.excProblems)
	if pc.poolProblem != "" {
		v.Problems = append(v.Problems, pc.poolProblem)
	}
	return v, true
}

// run is a network's writer: it plans on every change, when the last plan
// said it would change (Plan.Next), and at least every Replan (jittered, so
// that hosts started together do not plan together).
func (r *Router) run(ctx context.Context, w *netWatch) {
	defer close(w.done)
	tick := time.NewTimer(r.cfg.Replan)
	defer tick.Stop()
	rearm := func(next time.Time) {
		d := r.cfg.Replan - time.Duration(rand.Int64N(int64(r.cfg.Replan)/10+1))
		if !next.IsZero() {
			d = min(d, next.Sub(r.cfg.Now())+time.Second)
		}
		tick.Reset(max(d, time.Second))
	}
	log := r.cfg.Log.WithFields(logrus.Fields{"network": shortID(w.n.ID), "pool": w.n.Pool})
	var lastProblems string
	selfMissing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.poke:
		case <-tick.C:
		}
		r.mu.Lock()
		view, ready := r.viewLocked(w.n.Pool)
		var view6 View
		if w.n.Pool6.IsValid() {
			var ready6 bool
			view6, ready6 = r.viewLocked(w.n.Pool6)
			ready = ready && ready6
		}
		r.mu.Unlock()
		if !ready {
			tick.Reset(min(r.cfg.Replan, 30*time.Second))
			continue
		}
		if _, ok := view.Hosts[r.cfg.Host]; !ok {
			// A listing without this host's own registration is not the
			// cluster: a token that lost read access to the prefix gets
			// empty listings without an error, and pruning by them would
			// withdraw every peer. The host registers within a
			// renewal.
			tick.Reset(min(r.cfg.Replan, 30*time.Second))
			if !selfMissing {
				selfMissing = true
				log.Warnf("the store's listing of hosts lacks this host (%s): keeping the working state until it shows (does the store's token still read the prefix?)", r.cfg.Host)
			}
			continue
		}
		selfMissing = false
		u, err := r.cfg.Underlay()
		if err != nil {
			log.Warnf("peer sync (working state kept): %v", err)
			tick.Reset(min(r.cfg.Replan, 30*time.Second))
			continue
		}
		now := r.cfg.Now()
		plan := Compute(Input{Self: r.cfg.Host, Local: r.cfg.Local, Net: w.n, Underlay: u, TTL: r.cfg.TTL, Now: now, View: view, Memo: &w.memo})
		if w.n.Pool6.IsValid() {
			plan = Merge(plan, Compute6(Input{Self: r.cfg.Host, Local: r.cfg.Local, Net: w.n, Underlay: u, TTL: r.cfg.TTL, Now: now, View: view6, Memo: &w.memo6}))
		}
		rearm(plan.Next)
		changed, err := r.install(ctx, w, plan)
		if err != nil && ctx.Err() == nil {
			log.Warnf("peer sync: %v", err)
		}
		if changed {
			r.cfg.OnPeers()
		}
		if p := strings.Join(plan.Problems, "; "); p != lastProblems {
			lastProblems = p
			for _, problem := range plan.Problems {
				log.Warn(problem)
			}
		}
	}
}

// install applies a plan in the network's turn and records it; changed
// says whether its VXLAN peers or its WireGuard peers differ from the
// previous plan's.
func (r *Router) install(ctx context.Context, w *netWatch, plan Plan) (changed bool, err error) {
	w.turn.Lock()
	defer w.turn.Unlock()
	if ctx.Err() != nil {
		return false, nil // removed meanwhile: its device may be gone already
	}
	if w.applied == nil {
		err = Apply(r.k, w.n, plan)
	} else {
		err = Update(r.k, w.n, *w.applied, plan)
	}
	w.applied = &plan
	if err != nil {
		w.applied = nil // the kernel is not known: the next apply is a full one
	}
	r.mu.Lock()
	old := w.plan
	w.plan = &plan
	r.mu.Unlock()
	if w.n.Device != "" {
		changed = old == nil || !slices.Equal(old.VXLANPeers(), plan.VXLANPeers())
	}
	if w.n.Tunnel != "" {
		changed = changed || old == nil || !slices.EqualFunc(old.Tunnels, plan.Tunnels, Tunnel.Equal)
	}
	return changed, err
}

// Repair applies every network's last plan in full (dumping the kernel's
// tables): what was deleted by hand comes back, what was added goes. A
// network without a plan yet keeps whatever is in its pool until its first.
func (r *Router) Repair() error {
	var errs []string
	r.eachPlan(func(w *netWatch, plan *Plan) {
		err := Apply(r.k, w.n, *plan)
		w.applied = plan
		if err != nil {
			w.applied = nil
			errs = append(errs, err.Error())
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("peer entries: %s", strings.Join(errs, "; "))
	}
	return nil
}

// eachPlan calls fn for every network that has a plan, in the network's
// turn (w.turn held: no update of its entries runs meanwhile).
func (r *Router) eachPlan(fn func(w *netWatch, plan *Plan)) {
	r.mu.Lock()
	ws := make([]*netWatch, 0, len(r.nets))
	for _, w := range r.nets {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	for _, w := range ws {
		w.turn.Lock()
		r.mu.Lock()
		plan, live := w.plan, r.nets[w.n.ID] == w
		r.mu.Unlock()
		if plan != nil && live {
			fn(w, plan)
		}
		w.turn.Unlock()
	}
}

// Plan is the network's last plan.
func (r *Router) Plan(id string) (Plan, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, ok := r.nets[id]; ok && w.plan != nil {
		return *w.plan, true
	}
	return Plan{}, false
}

// VXLANPeers is the underlay addresses of every VXLAN peer of every network
// that has a plan, sorted; complete is false while a VXLAN network has no
// plan yet (its peers are not all known).
func (r *Router) VXLANPeers() (peers []netip.Addr, complete bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	peers, complete = []netip.Addr{}, true
	seen := map[netip.Addr]bool{}
	for _, w := range r.nets {
		if w.n.Device == "" {
			continue
		}
		if w.plan == nil {
			complete = false
			continue
		}
		for _, a := range w.plan.VXLANPeers() {
			if !seen[a] {
				seen[a] = true
				peers = append(peers, a)
			}
		}
	}
	slices.SortFunc(peers, func(a, b netip.Addr) int { return a.Compare(b) })
	return peers, complete
}

// Tunnels is the WireGuard peers of every network routed through a tunnel
// device, merged (one per host); ok is false while such a network has no
// plan yet (the device keeps the peers it has until every one has).
func (r *Router) Tunnels() (tunnels []Tunnel, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var lists [][]Tunnel
	for _, id := range slices.Sorted(maps.Keys(r.nets)) { // the same order every time
		w := r.nets[id]
		if w.n.Tunnel == "" {
			continue
		}
		if w.plan == nil {
			return nil, false
		}
		lists = append(lists, w.plan.Tunnels)
	}
	return MergeTunnels(lists...), true
}

// State describes every network's plan, for logs and tests.
func (r *Router) State() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for id, w := range r.nets {
		if w.plan != nil {
			fmt.Fprintf(&b, "%s: %d routes, %d peers, problems %v\n", shortID(id), len(w.plan.Routes), len(w.plan.Neighs), w.plan.Problems)
		}
	}
	return b.String()
}

func shortID(id string) string { return id[:min(12, len(id))] }

// Has says whether the network is routed.
func (r *Router) Has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.nets[id]
	return ok
}
