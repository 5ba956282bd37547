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
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/internal/dockerid"
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
	// a network changed (the firewall admits VXLAN from peers only), its
	// WireGuard peers did (Tunnels) or what it announces did (Announced),
	// and after such a network is removed.
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

	// listings bounds the pools' block listings in flight (maxListings).
	listings chan struct{}

	mu    sync.Mutex
	ctx   context.Context // nil until Start
	hosts *hostsCache
	pools map[netip.Prefix]*poolView
	nets  map[string]*netWatch
}

// maxListings is how many pools' block listings run at once.
const maxListings = 8

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
	return &Router{store: store, k: k, cfg: cfg, pools: map[netip.Prefix]*poolView{}, nets: map[string]*netWatch{},
		listings: make(chan struct{}, maxListings)}
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
		// Each answer is taken only while this cache is the router's: an
		// answer of a watch cancelled with the last network must not land
		// in the cache of the next (checked under r.mu, as Remove cancels).
		go r.follow(ctx, kv.HostsPrefix, func(ps []kv.Pair) { r.hostsListed(ctx, ps) })
		go r.readRenewals(ctx)
		// One watch of every pool's block feed and one of every pool's
		// route exceptions, whatever the number of networks: a blocking
		// query holds a connection to Consul, whose agents allow 200 per
		// client address (issue 24, audit M7).
		go r.followWith(ctx, kv.BlockFeedRoot, func(ps []kv.Pair) { r.feedsListed(ctx, ps) }, r.feedGap)
		go r.follow(ctx, kv.ExceptionRoot, func(ps []kv.Pair) { r.allExceptionsListed(ctx, ps) })
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
// block listing for the first; its feed entries and exceptions come from
// the host's watches of every pool's (what they last returned, at once).
// Called with r.mu held.
func (r *Router) watchPoolLocked(pool netip.Prefix) {
	pc, ok := r.pools[pool]
	if !ok {
		ctx, cancel := context.WithCancel(r.ctx)
		pc = &poolView{cancel: cancel, relist: make(chan struct{}, 1), byKey: map[string]versioned{}}
		r.pools[pool] = pc
		go r.listBlocks(ctx, pool, pc.relist)
		key := kv.PoolKey(pool.String())
		if r.hosts.feedReady {
			pc.feed = r.hosts.feeds[key]
		}
		if r.hosts.excReady {
			e := r.hosts.exceptions[key]
			pc.excReady, pc.exceptions, pc.excProblems = true, e.addrs, e.problems
		}
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
	if w.n.Device != "" || w.n.Tunnel != "" || w.n.Announce {
		r.cfg.OnPeers() // its VXLAN or WireGuard peers, or what it announced, are no longer anyone's
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

// Announced is what this host announces to its BGP peers, for every
// network that announces, sorted and once each; complete is false while
// such a network has no plan yet (the speaker keeps what it announces
// until every one has).
func (r *Router) Announced() (prefixes []netip.Prefix, complete bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range r.nets {
		if !w.n.Announce {
			continue
		}
		if w.plan == nil {
			return nil, false
		}
		prefixes = append(prefixes, w.plan.Announce...)
	}
	slices.SortFunc(prefixes, comparePrefix)
	return slices.Compact(prefixes), true
}

// State describes every network's plan, for logs and tests.
func (r *Router) State() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for id, w := range r.nets {
		if w.plan != nil {
			fmt.Fprintf(&b, "%s: %d routes, %d peers, problems %v\n", dockerid.Short(id), len(w.plan.Routes), len(w.plan.Neighs), w.plan.Problems)
		}
	}
	return b.String()
}

// Has says whether the network is routed.
func (r *Router) Has(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.nets[id]
	return ok
}
