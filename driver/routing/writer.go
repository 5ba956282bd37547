package routing

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/internal/dockerid"
)

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

func (w *netWatch) pokeNow() {
	select {
	case w.poke <- struct{}{}:
	default:
	}
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
	log := r.cfg.Log.WithFields(logrus.Fields{"network": dockerid.Short(w.n.ID), "pool": w.n.Pool})
	var lastProblems string
	selfMissing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.poke:
		case <-tick.C:
		}
		view, view6, ready := r.views(w)
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

// views is the network's view from the caches, and its IPv6 pool's on a
// dual-stack network; ready is false until every watch they need has
// answered once.
func (r *Router) views(w *netWatch) (view, view6 View, ready bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	view, ready = r.viewLocked(w.n.Pool)
	if w.n.Pool6.IsValid() {
		var ready6 bool
		view6, ready6 = r.viewLocked(w.n.Pool6)
		ready = ready && ready6
	}
	return view, view6, ready
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
	if w.n.Announce {
		changed = changed || old == nil || !slices.Equal(old.Announce, plan.Announce)
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
