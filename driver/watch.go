package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

// Data flows one way: store → watcher → full desired peer plan → kernel.
// Each network has one watcher goroutine, which is also the only writer of
// that network's peer entries outside Reconcile (both hold d.mu to write).

// startWatch starts the network's watcher. Called with d.mu held.
func (d *Driver) startWatch(n netRec) {
	if n.bridged() {
		return // no peers: containers meet on the parent's segment
	}
	if _, ok := d.watches[n.ID]; ok {
		return
	}
	ctx, cancel := context.WithCancel(d.bg)
	d.watches[n.ID] = cancel
	go d.watchNetwork(ctx, n.ID, n.Pool)
}

// stopWatch stops it. Called with d.mu held.
func (d *Driver) stopWatch(id string) {
	if cancel, ok := d.watches[id]; ok {
		cancel()
		delete(d.watches, id)
	}
	delete(d.plans, id)
}

// rewatch gives a network its watcher back when it is still here: a
// DeleteNetwork that stopped the watcher and then failed leaves the network
// in place, and without a watcher it would get no new peers (and no plan
// for Reconcile to repair) until a plugin restart. The watcher's first sync
// rebuilds the plan. Called with d.mu held.
func (d *Driver) rewatch(id string) {
	if n, ok := d.st.networks[id]; ok {
		d.startWatch(n)
	}
}

func (d *Driver) watchNetwork(ctx context.Context, id, pool string) {
	trigger := make(chan struct{}, 1)
	poke := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	for _, prefix := range []string{kv.BlockPrefix(pool), kv.AddressPrefix(pool), kv.HostsPrefix} {
		go d.watchPrefix(ctx, prefix, poke)
	}
	resync := time.NewTicker(d.cfg.Resync)
	defer resync.Stop()
	log := d.log.WithFields(logrus.Fields{"network": shortID(id), "pool": pool})
	var lastProblems string
	for {
		select {
		case <-ctx.Done():
			return
		case <-trigger:
		case <-resync.C:
		}
		plan, err := d.syncPeers(ctx, id)
		if err != nil {
			if ctx.Err() == nil {
				log.Warnf("peer sync (working state kept): %v", err)
			}
			continue
		}
		if p := strings.Join(plan.Problems, "; "); p != lastProblems {
			lastProblems = p
			for _, problem := range plan.Problems {
				log.Warn(problem)
			}
		}
	}
}

// watchPrefix pokes the network's writer whenever something under prefix
// changes. Errors only delay: they never remove working state.
func (d *Driver) watchPrefix(ctx context.Context, prefix string, poke func()) {
	var index uint64
	backoff := time.Second
	for ctx.Err() == nil {
		_, next, err := d.cluster.Watch(ctx, prefix, index)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.log.WithField("prefix", prefix).Debugf("watch: %v", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = time.Second
		if next != index {
			index = next
			poke()
		}
	}
}

func (d *Driver) snapshot(ctx context.Context, pool string) (snapshot, error) {
	snap := snapshot{Hosts: map[string]kv.Host{}}
	// A record that cannot be read is left out and reported with the
	// plan's problems: one bad key must not stop the sync of every peer.
	skipped := func(e *kv.DecodeError) { snap.Problems = append(snap.Problems, e.Error()) }
	// The pool record says how large its blocks are; a block record of
	// another size is not one the IPAM made.
	var p kv.Pool
	var derr *kv.DecodeError
	switch _, err := kv.GetJSON(ctx, d.cluster, kv.PoolPath(pool), &p); {
	case err == nil:
		if pfx, perr := netip.ParsePrefix(pool); perr == nil && p.BlockBits >= pfx.Bits() && p.BlockBits <= 32 {
			snap.BlockBits = p.BlockBits
		} else {
			snap.Problems = append(snap.Problems, fmt.Sprintf("pool record %s has block size /%d, which does not fit the pool: blocks are checked against the pool alone", pool, p.BlockBits))
		}
	case errors.Is(err, kv.ErrNotFound):
		// Released meanwhile: blocks are checked against the pool alone.
	case errors.As(err, &derr):
		skipped(derr)
	default:
		return snap, err
	}
	if _, err := kv.ListJSON(ctx, d.cluster, kv.HostsPrefix, func(_ string, _ uint64, h kv.Host) error {
		snap.Hosts[h.ID] = h
		return nil
	}, skipped); err != nil {
		return snap, err
	}
	if _, err := kv.ListJSON(ctx, d.cluster, kv.BlockPrefix(pool), func(_ string, _ uint64, b kv.Block) error {
		snap.Blocks = append(snap.Blocks, b)
		return nil
	}, skipped); err != nil {
		return snap, err
	}
	_, err := kv.ListJSON(ctx, d.cluster, kv.AddressPrefix(pool), func(_ string, _ uint64, a kv.Address) error {
		snap.Addrs = append(snap.Addrs, a)
		return nil
	}, skipped)
	return snap, err
}

// syncPeers reads the network's full state from the store, plans, and
// applies the plan (pruning what it no longer wants).
func (d *Driver) syncPeers(ctx context.Context, id string) (peerPlan, error) {
	d.mu.Lock()
	n, ok := d.st.networks[id]
	d.mu.Unlock()
	if !ok {
		return peerPlan{}, nil
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	snap, err := d.snapshot(sctx, n.Pool)
	if err != nil {
		return peerPlan{}, err
	}
	if _, ok := snap.Hosts[d.cfg.Host]; !ok {
		// A listing without this host's own registration is not the
		// cluster: a token that lost read access to the prefix gets empty
		// listings without an error, and pruning by them would withdraw
		// every peer (audit S3). The host registers within a renewal.
		return peerPlan{}, fmt.Errorf("the store's listing of hosts lacks this host (%s): keeping the working state until it shows (does the store's token still read the prefix?)", d.cfg.Host)
	}
	u, err := kernel.FindUnderlay(d.cfg.Advertise)
	if err != nil {
		return peerPlan{}, err
	}
	plan := planPeers(planInput{Self: d.cfg.Host, Net: n, Underlay: u, TTL: d.cfg.LeaseTTL, Now: time.Now(), Snap: snap})
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.st.networks[id]; !ok || ctx.Err() != nil {
		return plan, nil // deleted meanwhile
	}
	d.plans[id] = plan
	err = d.applyPeers(n, plan)
	if n.Device != "" && peersKey(d.vxlanPeersLocked()) != d.fwPeers {
		// The VXLAN port admits the current peers only.
		err = errors.Join(err, d.applyFirewall())
	}
	return plan, err
}

// applyPeers makes the kernel hold exactly the plan's peer entries for the
// network: missing ones are added, others on its device or in its pool are
// removed. Called with d.mu held, only with a plan from a full snapshot.
func (d *Driver) applyPeers(n netRec, plan peerPlan) error {
	var errs []error
	pool := n.pool()
	if n.Device != "" && kernel.LinkExists(n.Device) {
		wantN := map[string]bool{}
		for _, x := range plan.Neighs {
			wantN[x.IP.String()+"/"+x.MAC] = true
			if err := kernel.ReplaceNeigh(x); err != nil {
				errs = append(errs, err)
			}
		}
		wantF := map[string]bool{}
		for _, f := range plan.FDBs {
			wantF[f.MAC+"/"+f.Dst.String()] = true
			if err := kernel.ReplaceFDB(f); err != nil {
				errs = append(errs, err)
			}
		}
		if cur, err := kernel.Neighs(n.Device); err == nil {
			for _, x := range cur {
				if !wantN[x.IP.String()+"/"+x.MAC] {
					errs = append(errs, kernel.DeleteNeigh(x))
				}
			}
		}
		if cur, err := kernel.FDBs(n.Device); err == nil {
			for _, f := range cur {
				if !wantF[f.MAC+"/"+f.Dst.String()] {
					errs = append(errs, kernel.DeleteFDB(f))
				}
			}
		}
	}
	want := map[kernel.Route]bool{}
	for _, r := range plan.Routes {
		if !inside(pool, r.Dst) {
			// planPeers never plans one; refusing it here as well keeps a
			// store record from ever replacing a host route (RouteReplace
			// would overwrite a default route in the main table).
			errs = append(errs, fmt.Errorf("refusing peer route %s: outside the network's pool %s", r, pool))
			continue
		}
		want[r] = true
		if err := kernel.ReplaceRoute(r); err != nil {
			errs = append(errs, err)
		}
	}
	routes, err := kernel.OwnedRoutes()
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range routes {
		// Peer routes of this network: anything tartan routed via a peer
		// that touches the pool (also a wider prefix an older version let
		// in from a bad record) or that sits on the network's device.
		mine := pool.Overlaps(r.Dst) || (n.Device != "" && r.Link == n.Device)
		if r.Via.IsValid() && mine && !want[r] {
			errs = append(errs, kernel.DeleteRoute(r))
		}
	}
	return errors.Join(errs...)
}

// inLocalPool says whether dst is inside the pool of a network of this host.
// Called with d.mu held.
func (d *Driver) inLocalPool(dst netip.Prefix) bool {
	for _, n := range d.st.networks {
		if inside(n.pool(), dst) {
			return true
		}
	}
	return false
}

// PeerState describes the peers of every network, for logs and tests.
func (d *Driver) PeerState() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for id, p := range d.plans {
		fmt.Fprintf(&b, "%s: %d routes, %d peers, problems %v\n", shortID(id), len(p.Routes), len(p.Neighs), p.Problems)
	}
	return b.String()
}
