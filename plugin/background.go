package plugin

import (
	"context"
	"errors"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// RenewEvery is how often the host checks its registration and leases: a
// tenth of the lease lifetime, at most a minute, so that a new underlay
// address is published within a minute and a live host never lapses.
func RenewEvery(ttl time.Duration) time.Duration { return min(time.Minute, ttl/10) }

// RenewAfter is how often a host renews its liveness (renewals/<id>, which
// nobody watches): a quarter of the lease lifetime, at most an hour.
func RenewAfter(ttl time.Duration) time.Duration { return min(time.Hour, ttl/4) }

// repairNow asks the background's resync loop for a resync now (tartan
// repair) and waits for its outcome.
func repairNow(repairs chan chan error) func(context.Context) error {
	return func(ctx context.Context) error {
		done := make(chan error, 1)
		select {
		case repairs <- done:
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// background does the work that must never hold up a request: the first
// full reconcile, then periodic ones (and one for each tartan repair, sent
// on repairs), host registration and lease renewal.
func background(ctx context.Context, drv *driver.Driver, im *ipam.IPAM, outbox *Outbox, reg *Registrar, identity *Identity, returned <-chan struct{}, newKey bool, s Settings, metrics *Metrics, repairs chan chan error, log logrus.FieldLogger) {
	w := chores{drv: drv, im: im, outbox: outbox, reg: reg, metrics: metrics, log: log}
	// Three loops: a reconcile that is slow (a busy xtables lock, a slow
	// kernel) must not stop the host's renewals, or every peer would take
	// a live host for gone; gone hosts are collected at the
	// pace of leases.
	go func() {
		// Registered only once this machine holds its host ID: a copy of
		// another machine's state folder never registers.
		if err := identity.Ready(ctx); err != nil {
			return
		}
		if newKey {
			// A new WireGuard key (WG_ROTATE, a removed key file) is
			// registered once the device has its peers: a peer that
			// re-keys at once and finds it not ready would wait out
			// WireGuard's 5-second handshake retry.
			waitUntil(ctx, 15*time.Second, drv.TunnelReady)
		}
		every(ctx, RenewEvery(s.LeaseTTL), func() { w.renew(ctx) })
	}()
	go every(ctx, max(s.LeaseTTL, time.Minute), func() { w.collect(ctx) })
	// A host record written anew (Registrar.Created) may mean this host was
	// collected while it was away: what it uses goes back at once, not at
	// the next collection.
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-returned:
				c, cancel := context.WithTimeout(ctx, time.Minute)
				w.reassert(c)
				cancel()
			}
		}
	}()
	// A start is often the end of a crash, whose half-made requests left
	// orphaned records: one more pass once they are old enough to sweep
	// (the periodic one may be a lease lifetime away).
	go func() {
		select {
		case <-time.After(2 * ipam.OrphanAfter):
			w.collect(ctx)
		case <-ctx.Done():
		}
	}()
	t := time.NewTicker(s.Resync)
	defer t.Stop()
	_ = w.reconcile(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = w.reconcile(ctx)
		case done := <-repairs:
			done <- w.reconcile(ctx)
			t.Reset(s.Resync)
		}
	}
}

// chores are the host's periodic work: the resync, the host's registration
// and leases, and the collection of what gone hosts held.
type chores struct {
	drv     *driver.Driver
	im      *ipam.IPAM
	outbox  *Outbox
	reg     *Registrar
	metrics *Metrics
	log     logrus.FieldLogger
}

// reconcile is the resync: the driver's reconcile, then the releases
// queued while the store was unreachable (an empty queue costs a local
// listing).
func (w chores) reconcile(ctx context.Context) error {
	start := time.Now()
	err := w.drv.Reconcile(ctx)
	w.metrics.Resync(time.Since(start), err)
	if err != nil {
		w.log.Warnf("reconcile: %v", err)
	}
	c, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	landed, left, ferr := w.outbox.Flush(c)
	if ferr != nil {
		w.log.Warnf("queued releases: %v", ferr)
	}
	if landed > 0 || left > 0 {
		w.log.WithFields(logrus.Fields{"landed": landed, "left": left}).Info("queued address releases retried")
	}
	return errors.Join(err, ferr)
}

// renew renews the host's registration and its block leases.
func (w chores) renew(ctx context.Context) {
	c, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	rerr := w.reg.Register(c)
	if rerr != nil {
		w.log.Warnf("host registration: %v", rerr)
	}
	lerr := w.im.RenewLeases(c)
	if lerr != nil {
		w.log.Warnf("lease renewal: %v", lerr)
	}
	w.metrics.Renewal(errors.Join(rerr, lerr))
}

// reassert puts what this host uses back into the store if it is gone from
// it (collected while the host was cut off, or removed by a bug or a
// hand): its holder key of every pool its networks use, the records of its
// live endpoints' addresses, IPv4 and IPv6, and their label records.
func (w chores) reassert(c context.Context) {
	for _, id := range w.drv.LocalPools() {
		if err := w.im.ReassertHolder(c, id); err != nil && !errors.Is(err, kv.ErrConflict) {
			w.log.Errorf("holder key of a pool this host uses: %v", err)
		}
	}
	for _, a := range w.drv.LocalAddresses() {
		if err := w.im.Reassert(c, a.Pool, a.IP, a.MAC); err != nil {
			w.log.Errorf("address of a live endpoint: %v", err)
		}
	}
	wrote, removed, err := w.drv.SyncLabels(c)
	if err != nil {
		w.log.Warnf("labels of this host's endpoints: %v", err)
	}
	if wrote+removed > 0 {
		w.log.WithFields(logrus.Fields{"written": wrote, "removed": removed}).Info("endpoint label records made right")
	}
}

// collect reasserts what this host uses, then collects what gone hosts
// held and this host's orphaned addresses.
func (w chores) collect(ctx context.Context) {
	c, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	w.reassert(c)
	got, err := w.im.CollectGone(c, w.drv.Holding)
	if err != nil {
		w.log.Warnf("collecting gone hosts: %v", err)
	}
	if got != (ipam.Collected{}) {
		w.log.WithFields(logrus.Fields{"addresses": got.Addresses, "blocks": got.Blocks, "hosts": got.Hosts, "orphans": got.Orphans}).Info("collected what gone hosts held and this host's orphaned addresses")
	}
}

// waitUntil polls cond every 100 ms until it holds, ctx ends or limit
// passes.
func waitUntil(ctx context.Context, limit time.Duration, cond func() bool) {
	deadline := time.Now().Add(limit)
	for !cond() && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// every runs fn now and then every period until ctx ends.
func every(ctx context.Context, period time.Duration, fn func()) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
