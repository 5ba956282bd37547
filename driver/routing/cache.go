package routing

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/tartan-net/tartan/kv"
)

// hostsCache is the hosts/ prefix as its watch last returned it.
type hostsCache struct {
	cancel   context.CancelFunc
	ready    bool
	hosts    map[string]kv.Host
	problems []string
	renewals map[string]time.Time // read every Liveness, not watched
	// feeds and exceptions are every pool's block feed entries and route
	// exceptions as their watches last returned them, by pool key
	// (kv.PoolKey): the pools' views take theirs from here.
	feeds               map[string][]kv.Pair
	exceptions          map[string]poolExceptions
	feedReady, excReady bool
}

// poolExceptions is one pool's route exceptions.
type poolExceptions struct {
	addrs    []kv.Address
	problems []string
	version  string // its keys and their versions: what tells a change
}

// poolView is a pool's blocks and route exceptions, shared by every network
// of the host on that pool. The blocks come from a listing of the pool's
// blocks (at start and every Relist) with the block feed's recent changes
// laid over it (kv.BlockFeedPrefix): every entry newer than what the cache
// holds for its block wins.
type poolView struct {
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

func (r *Router) hostsListed(ctx context.Context, ps []kv.Pair) {
	hosts := map[string]kv.Host{}
	var problems []string
	_ = kv.DecodeJSON(r.store, ps, func(_ string, _ uint64, h kv.Host) error {
		hosts[h.ID] = h
		return nil
	}, func(e *kv.DecodeError) { problems = append(problems, e.Error()) })
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hosts == nil || ctx.Err() != nil {
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
				if r.hosts != nil && ctx.Err() == nil {
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
		// A few pools' listings at a time: a start with many networks
		// (or a relist of every pool after a gap) would otherwise open a
		// connection to the store per pool at once.
		select {
		case r.listings <- struct{}{}:
		case <-ctx.Done():
			return
		}
		ps, _, err := r.store.List(ctx, kv.BlockPrefix(pool.String()))
		if err == nil {
			r.blocksListed(ctx, pool, ps)
		}
		<-r.listings
		wait := r.cfg.Relist
		if err == nil {
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

// feedsListed lays every pool's block feed entries over its blocks.
func (r *Router) feedsListed(ctx context.Context, ps []kv.Pair) {
	byPool := groupByPool(ps, kv.BlockFeedRoot)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hosts == nil || ctx.Err() != nil {
		return
	}
	r.hosts.feeds, r.hosts.feedReady = byPool, true
	for pool, pc := range r.pools {
		pc.feed = byPool[kv.PoolKey(pool.String())]
		if pc.overlayLocked(r.store, pool, false) && pc.blocksReady {
			r.pokePoolLocked(pool)
		}
	}
}

// feedGap is the word that the feed went unwatched for a while: entries
// may have come and gone, so every pool's blocks are read again.
func (r *Router) feedGap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pc := range r.pools {
		select {
		case pc.relist <- struct{}{}:
		default:
		}
	}
}

// groupByPool groups the pairs under root by the pool key that follows it
// (root + pool key + "/" + the rest).
func groupByPool(ps []kv.Pair, root string) map[string][]kv.Pair {
	out := map[string][]kv.Pair{}
	for _, p := range ps {
		if pool, _, ok := strings.Cut(strings.TrimPrefix(p.Key, root), "/"); ok {
			out[pool] = append(out[pool], p)
		}
	}
	return out
}

// overlayLocked applies the feed's entries that are newer than what the
// cache holds for their block, rebuilds the block list (always, with
// rebuild) and says whether it changed. Called with r.mu held.
func (pc *poolView) overlayLocked(store kv.Store, pool netip.Prefix, rebuild bool) bool {
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

// allExceptionsListed gives every pool its route exceptions.
func (r *Router) allExceptionsListed(ctx context.Context, ps []kv.Pair) {
	byPool := map[string]poolExceptions{}
	for key, pairs := range groupByPool(ps, kv.ExceptionRoot) {
		var e poolExceptions
		var v strings.Builder
		for _, p := range pairs {
			fmt.Fprintf(&v, "%s@%d ", p.Key, p.Version)
		}
		e.version = v.String()
		_ = kv.DecodeJSON(r.store, pairs, func(_ string, _ uint64, a kv.Address) error {
			e.addrs = append(e.addrs, a)
			return nil
		}, func(de *kv.DecodeError) { e.problems = append(e.problems, de.Error()) })
		byPool[key] = e
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hosts == nil || ctx.Err() != nil {
		return
	}
	old := r.hosts.exceptions
	r.hosts.exceptions, r.hosts.excReady = byPool, true
	for pool, pc := range r.pools {
		key := kv.PoolKey(pool.String())
		e, was := byPool[key], old[key]
		if pc.excReady && e.version == was.version {
			continue // this pool's did not change
		}
		pc.excReady, pc.exceptions, pc.excProblems = true, e.addrs, e.problems
		r.pokePoolLocked(pool)
	}
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
