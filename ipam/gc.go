package ipam

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/kv"
)

// GoneAfter is how long a host's registration must have lapsed (in lease
// lifetimes) before its addresses are collected: its blocks are claimable
// after one lifetime, its addresses only after two, so that a host cut off
// for a while keeps them.
const GoneAfter = 2

// OrphanAfter is how old a record of this host's own must be before the
// sweep may take it for an orphan. Docker asks for an address and creates
// the endpoint right after, so a record that no endpoint has after this long
// was left by a call that failed half-way: the plugin killed between the
// two, a reply lost and the request sent again (a second address), a
// release Docker gave up on while the plugin was down.
const OrphanAfter = time.Minute

// Holding lists what this host's endpoints hold now: for each pool of a
// local-scope network of this host, the addresses of its endpoints. Pools
// it does not list are not swept (global-scope pools are allocated by swarm
// managers for tasks on any node; a pool with no tartan network here is
// another driver's).
type Holding func() map[string]map[string]bool

// Collected says what CollectGone removed.
type Collected struct {
	// Addresses, Blocks and Hosts are those of gone hosts.
	Addresses, Blocks, Hosts int
	// Orphans are this host's own address records that no endpoint has.
	Orphans int
}

// CollectGone removes, cluster-wide, the endpoint addresses and blocks of
// hosts that are gone: their registration is missing or has not been
// renewed for GoneAfter lease lifetimes. Every delete is
// compare-and-set on the version read, so several hosts may run it at once
// and a record rewritten meanwhile (a host that came back) stays. The
// records of a gone host go last, once nothing of it is left.
//
// With local, it also sweeps this host's own endpoint address records
// older than OrphanAfter that no endpoint of the host has (local is asked
// after each pool's listing, so an endpoint created meanwhile is seen).
func (m *IPAM) CollectGone(ctx context.Context, local Holding) (Collected, error) {
	if err := m.ready(ctx); err != nil {
		return Collected{}, err
	}
	var got Collected
	now := m.cfg.Now()
	// One listing of hosts/ gives both the liveness rule's records and the
	// versions a gone host's record is deleted at.
	live := kv.Liveness{Hosts: map[string]kv.Host{}, Now: now, TTL: GoneAfter * m.cfg.LeaseTTL}
	hostVersion := map[string]uint64{}
	if _, err := kv.ListJSON(ctx, m.store, kv.HostsPrefix, func(_ string, ver uint64, h kv.Host) error {
		live.Hosts[h.ID], hostVersion[h.ID] = h, ver
		return nil
	}, m.skipped); err != nil {
		return got, err
	}
	renewals, err := kv.ReadRenewals(ctx, m.store, m.skipped)
	if err != nil {
		return got, err
	}
	live.Observe(m.cfg.Witness, renewals)
	gone := func(host string) bool { return host != m.cfg.Host && !live.HostAlive(host) }
	pools, err := m.pools(ctx)
	if err != nil {
		return got, err
	}
	holding := map[string]bool{} // gone hosts that still hold something
	var errs []error
	for cidr := range pools {
		g := poolGC{m: m, cidr: cidr, gone: gone, now: now, holding: holding}
		if err := g.collect(ctx, local, &got); err != nil {
			errs = append(errs, err)
		}
	}
	for host, ver := range hostVersion {
		if gone(host) && !holding[host] && len(errs) == 0 {
			if _, err := m.store.Txn(ctx, []kv.Op{{Key: kv.HostPath(host), Delete: true, Version: ver}, {Key: kv.RenewalPath(host), Delete: true}}); err == nil {
				got.Hosts++
				// Its endpoints' labels go with it (it writes them again if
				// it comes back: its reassert).
				errs = append(errs, m.dropLabels(ctx, host))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return got, fmt.Errorf("collect gone hosts: %w", err)
	}
	return got, nil
}

// dropLabels removes a gone host's endpoint label records.
func (m *IPAM) dropLabels(ctx context.Context, host string) error {
	ps, _, err := m.store.List(ctx, kv.EndpointLabelsPrefix(host))
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range ps {
		errs = append(errs, m.store.Delete(ctx, p.Key, p.Version))
	}
	return errors.Join(errs...)
}

// Reassert makes sure the record of an address a live endpoint of this host
// has exists: a host cut off from the store for longer than GoneAfter lease
// lifetimes finds its addresses collected, and takes them back unless
// another host was given one meanwhile (then it says so: that address is
// now on two hosts, and the container here must be restarted).
func (m *IPAM) Reassert(ctx context.Context, id PoolID, ip, mac string) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	rec := kv.Address{IP: ip, Pool: id.CIDR.String(), Host: m.cfg.Host, Kind: kv.KindEndpoint, MAC: mac, Created: m.cfg.Now().UTC()}
	var cur kv.Address
	_, err := kv.GetJSON(ctx, m.store, kv.AddressPath(rec.Pool, ip), &cur)
	switch {
	case err == nil && cur.Host != m.cfg.Host && id.Space != GlobalSpace:
		return fmt.Errorf("address %s of a container of this host is held by host %s (this host was cut off from the store for more than %d lease lifetimes): restart the container to give it a new address", ip, cur.Host, GoneAfter)
	case err == nil || !errors.Is(err, kv.ErrNotFound):
		return err
	}
	pc, err := m.cache(ctx, rec.Pool)
	if err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err := m.create(ctx, pc, rec)
		if !errors.Is(err, kv.ErrConflict) {
			if err != nil {
				return err
			}
			break
		}
		if _, gerr := m.store.Get(ctx, kv.AddressPath(rec.Pool, ip)); !errors.Is(gerr, kv.ErrNotFound) || attempt == 2 {
			return gerr // taken meanwhile (the next pass looks again), or the store's answer
		}
		pc.mu.Lock()
		err = m.readPool(ctx, pc) // the pool record changed
		pc.mu.Unlock()
		if err != nil {
			return err
		}
	}
	if a, err := netip.ParseAddr(ip); err == nil {
		pc.mark(a, true)
		m.reclaimBlock(ctx, pc, a, rec)
	}
	m.log.WithFields(logrus.Fields{"pool": rec.Pool, "ip": ip}).Warn("took back the address of a live endpoint whose record was gone")
	return nil
}

// reclaimBlock takes back the block of an address Reassert took back, if
// no host holds it (it went with this host's collection): its peers then
// route the block here again at once. A block another host took meanwhile
// stays that host's, and the address gets its route exception now (this
// host's own view may still count the block as its own, so create wrote
// none): waiting for the next collection to publish it left the container
// unreachable from the other hosts for up to a collection period.
func (m *IPAM) reclaimBlock(ctx context.Context, pc *poolCache, a netip.Addr, rec kv.Address) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	b := pc.layout.BlockOf(a)
	if !b.IsValid() {
		return
	}
	// This host's view may still count it as its own: the store says.
	var blk kv.Block
	_, err := kv.GetJSON(ctx, m.store, kv.BlockPath(pc.cidr, b.String()), &blk)
	switch {
	case err == nil && blk.Host != m.cfg.Host:
		m.publishExceptionLocked(ctx, pc, rec)
		return
	case !errors.Is(err, kv.ErrNotFound):
		return
	}
	if err := m.leaseLocked(ctx, pc, b, 0); err != nil && !errors.Is(err, kv.ErrConflict) {
		m.log.WithFields(logrus.Fields{"pool": pc.cidr, "block": b}).Warnf("take back the block of a live endpoint: %v", err)
	}
}

// publishExceptionLocked writes the route exception of an address this
// host holds in another host's block, while its record is this host's (the
// next collection repairs what a failure here leaves).
func (m *IPAM) publishExceptionLocked(ctx context.Context, pc *poolCache, rec kv.Address) {
	var cur kv.Address
	ver, err := kv.GetJSON(ctx, m.store, kv.AddressPath(pc.cidr, rec.IP), &cur)
	if err != nil || cur.Host != m.cfg.Host {
		return
	}
	b, err := json.Marshal(cur)
	if err != nil {
		return
	}
	ops := []kv.Op{{Key: kv.AddressPath(pc.cidr, rec.IP), Version: ver, Check: true}, {Key: kv.ExceptionPath(pc.cidr, rec.IP), Value: b, Version: kv.Any}}
	if _, err := m.store.Txn(ctx, ops); err != nil {
		m.log.WithFields(logrus.Fields{"pool": pc.cidr, "ip": rec.IP}).Warnf("route exception of a live endpoint in another host's block (the next collection retries): %v", err)
		return
	}
	m.log.WithFields(logrus.Fields{"pool": pc.cidr, "ip": rec.IP}).Info("published the route exception of a live endpoint whose block another host took while this one was away")
}

// ReassertHolder makes sure this host's holder key of a pool one of its
// networks uses exists (a bug, or a hand, removed it): without it, another
// host's ReleasePool would take itself for the pool's last holder and wipe
// the pool under this host's network. A pool released meanwhile cannot be
// taken back: the error says to make the network again.
func (m *IPAM) ReassertHolder(ctx context.Context, id PoolID) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	cidr := id.CIDR.String()
	key := kv.HolderPath(cidr, m.holder(id.Space))
	if _, err := m.store.Get(ctx, key); err == nil || !errors.Is(err, kv.ErrNotFound) {
		return err
	}
	pool, err := m.store.Get(ctx, kv.PoolPath(cidr))
	if errors.Is(err, kv.ErrNotFound) {
		return fmt.Errorf("pool %s of a network of this host was released by the other hosts while this one's holder key was missing: remove the network here and create it again", cidr)
	} else if err != nil {
		return err
	}
	// Written only while the pool record is as read (not being released).
	if _, err := m.store.Txn(ctx, []kv.Op{{Key: key, Value: []byte(m.cfg.Host), Version: kv.Any}, {Key: kv.PoolPath(cidr), Version: pool.Version, Check: true}}); err != nil {
		return err // a conflict: the next pass looks again
	}
	m.log.WithField("pool", cidr).Warn("wrote this host's holder key of a pool its networks use again (it was gone)")
	return nil
}

// poolGC is one pool's part of CollectGone.
type poolGC struct {
	m       *IPAM
	cidr    string
	gone    func(host string) bool
	now     time.Time
	holding map[string]bool
	errs    []error
	got     *Collected

	blocks     map[netip.Prefix]listed[kv.Block]
	sizes      []int // the blocks' prefix lengths (kv.BlockHolding)
	exceptions map[string]listed[kv.Address]
	seen       map[string]bool // every address listed
	own        []candidate     // this host's addresses old enough to be orphans
}

type listed[T any] struct {
	ver uint64
	rec T
}

// candidate is an address record that may be an orphan.
type candidate struct {
	ip  string
	ver uint64
}

// collect removes what gone hosts hold in the pool and this host's orphans,
// and makes the pool's route exceptions match its addresses: an endpoint
// address away from its block's owner has one (records made by versions
// that did not write them, a block that changed hands), and no exception
// outlives its address.
func (g *poolGC) collect(ctx context.Context, local Holding, got *Collected) error {
	g.got = got
	if err := g.listBlocks(ctx); err != nil {
		return err
	}
	if err := g.listExceptions(ctx); err != nil {
		return err
	}
	if err := g.sweepAddresses(ctx, local != nil); err != nil {
		return err
	}
	g.dropDanglingExceptions(ctx)
	if len(g.own) > 0 {
		g.releaseOrphans(ctx, local()[g.cidr])
	}
	g.dropGoneBlocks(ctx)
	g.dropStaleFeed(ctx)
	// A gone host's holder keys stay: a host that comes back from a long
	// partition still uses its networks, and no release elsewhere may take
	// their pool for its last (ReleasePool wipes the pool with its last
	// holder). A holder key costs one record; one of a host that is gone
	// for good keeps its pool registered until it is deleted by hand
	// (tartan doctor names it).
	return errors.Join(g.errs...)
}

// listBlocks reads the pool's blocks. What the witness saw of blocks no
// longer listed goes (its memory follows the store).
func (g *poolGC) listBlocks(ctx context.Context) error {
	m := g.m
	g.blocks = map[netip.Prefix]listed[kv.Block]{}
	if _, err := kv.ListJSON(ctx, m.store, kv.BlockPrefix(g.cidr), func(_ string, ver uint64, b kv.Block) error {
		b.Pool = g.cidr // the pool it is listed under, whatever the record says (the witness's key)
		if p, err := netip.ParsePrefix(b.CIDR); err == nil {
			g.blocks[p] = listed[kv.Block]{ver, b}
			if !slices.Contains(g.sizes, p.Bits()) {
				g.sizes = append(g.sizes, p.Bits())
			}
		}
		return nil
	}, m.skipped); err != nil {
		return err
	}
	m.cfg.Witness.Forget(kv.BlockPrefix(g.cidr), func(k string) bool {
		p, err := kv.PrefixFromKey(strings.TrimPrefix(k, kv.BlockPrefix(g.cidr)))
		_, ok := g.blocks[p]
		return err == nil && ok
	})
	return nil
}

// owner is the host of the block that holds ip ("" when none does).
func (g *poolGC) owner(ip netip.Addr) string {
	b, _ := kv.BlockHolding(g.blocks, g.sizes, ip)
	return b.rec.Host
}

// listExceptions reads the pool's route exceptions.
func (g *poolGC) listExceptions(ctx context.Context) error {
	g.exceptions = map[string]listed[kv.Address]{}
	_, err := kv.ListJSON(ctx, g.m.store, kv.ExceptionPrefix(g.cidr), func(_ string, ver uint64, a kv.Address) error {
		g.exceptions[a.IP] = listed[kv.Address]{ver, a}
		return nil
	}, g.m.skipped)
	return err
}

// sweepAddresses reads every address of the pool: a gone host's endpoint
// addresses go, this host's old enough ones are noted as orphan candidates
// (with orphans), and the others' route exceptions are made right.
func (g *poolGC) sweepAddresses(ctx context.Context, orphans bool) error {
	m := g.m
	g.seen = map[string]bool{}
	_, err := kv.ListJSON(ctx, m.store, kv.AddressPrefix(g.cidr), func(key string, ver uint64, a kv.Address) error {
		g.seen[a.IP] = true
		if a.Kind != kv.KindEndpoint {
			return nil
		}
		if orphans && m.orphanAge(g.cidr, ver, a, g.now) {
			g.own = append(g.own, candidate{a.IP, ver})
		} else if g.gone(a.Host) {
			if err := m.deleteAddress(ctx, g.cidr, a.IP, ver); err != nil {
				g.holding[a.Host] = true
				g.fail(err)
				return nil
			}
			g.got.Addresses++
			m.log.WithFields(logrus.Fields{"ip": a.IP, "host": a.Host}).Info("collected the address of a gone host")
			return nil
		}
		return g.repairException(ctx, key, ver, a)
	}, m.skipped)
	if err == nil { // what the witness saw of addresses no longer listed goes
		m.cfg.Witness.Forget(kv.AddressPrefix(g.cidr), func(k string) bool { return g.seen[strings.TrimPrefix(k, kv.AddressPrefix(g.cidr))] })
	}
	return err
}

// repairException gives an endpoint address away from its block's owner
// its route exception, and takes it from one that is not, each only while
// the address record is as read (key at ver).
func (g *poolGC) repairException(ctx context.Context, key string, ver uint64, a kv.Address) error {
	m := g.m
	ip, err := netip.ParseAddr(a.IP)
	if err != nil {
		return nil
	}
	e, has := g.exceptions[a.IP]
	switch needs := g.owner(ip) != a.Host; {
	case needs && (!has || e.rec.Host != a.Host):
		b, err := json.Marshal(a)
		if err != nil {
			return err
		}
		exc := kv.Op{Key: kv.ExceptionPath(g.cidr, a.IP), Value: b, Version: e.ver}
		if _, err := m.store.Txn(ctx, []kv.Op{{Key: key, Version: ver, Check: true}, exc}); err == nil {
			m.log.WithFields(logrus.Fields{"ip": a.IP, "host": a.Host}).Info("published the route exception of an address away from its block's owner")
		} else {
			g.fail(err)
		}
	case !needs && has:
		if _, err := m.store.Txn(ctx, []kv.Op{{Key: key, Version: ver, Check: true}, {Key: kv.ExceptionPath(g.cidr, a.IP), Delete: true, Version: e.ver}}); err != nil {
			g.fail(err)
		}
	}
	return nil
}

// dropDanglingExceptions removes the route exceptions whose address is gone
// (a version that did not remove them).
func (g *poolGC) dropDanglingExceptions(ctx context.Context) {
	for ip, e := range g.exceptions {
		if !g.seen[ip] {
			if _, err := g.m.store.Txn(ctx, []kv.Op{{Key: kv.AddressPath(g.cidr, ip), Check: true}, {Key: kv.ExceptionPath(g.cidr, ip), Delete: true, Version: e.ver}}); err != nil {
				g.fail(err)
			}
		}
	}
}

// releaseOrphans releases the orphan candidates that no endpoint of this
// host holds (held, asked after the listing: an endpoint created meanwhile
// is seen; nil: the pool is not swept).
func (g *poolGC) releaseOrphans(ctx context.Context, held map[string]bool) {
	for _, c := range g.own {
		if held == nil || held[c.ip] {
			continue
		}
		if err := g.m.deleteAddress(ctx, g.cidr, c.ip, c.ver); err != nil {
			g.fail(err)
			continue
		}
		g.got.Orphans++
		g.m.log.WithFields(logrus.Fields{"pool": g.cidr, "ip": c.ip}).Warn("released an address of this host that no endpoint has (a request or a release failed half-way)")
	}
}

// dropGoneBlocks removes the blocks of gone hosts. The block's lease must
// have gone unrenewed for a lease lifetime by this host's clock as well:
// its host's is never compared.
func (g *poolGC) dropGoneBlocks(ctx context.Context) {
	for p, b := range g.blocks {
		renewed := g.m.cfg.Witness.Block(b.rec, g.now) // every pass: the clock starts at the first
		if !g.gone(b.rec.Host) {
			continue
		}
		if g.now.Sub(renewed) < g.m.cfg.LeaseTTL {
			g.holding[b.rec.Host] = true // its host's record stays while it holds a block
			continue
		}
		b.rec.CIDR = p.String()
		if err := g.m.dropBlock(ctx, g.cidr, b.rec, b.ver); err != nil {
			g.holding[b.rec.Host] = true
			g.fail(err)
			continue
		}
		g.got.Blocks++
	}
}

// dropStaleFeed removes the feed entries their writer did not remove (it
// stopped meanwhile): seen unchanged for twice the feed's retention by this
// host's clock (the time in the entry is its writer's).
func (g *poolGC) dropStaleFeed(ctx context.Context) {
	m := g.m
	listed := map[string]bool{}
	if _, err := kv.ListJSON(ctx, m.store, kv.BlockFeedPrefix(g.cidr), func(key string, ver uint64, _ kv.BlockChange) error {
		listed[key] = true
		if g.now.Sub(m.cfg.Witness.Saw(key, strconv.FormatUint(ver, 10), g.now)) > 2*kv.FeedRetention {
			g.fail(m.store.Delete(ctx, key, ver))
		}
		return nil
	}, func(e *kv.DecodeError) { g.fail(m.store.Delete(ctx, e.Key, 0)) }); err != nil {
		g.fail(err)
	} else {
		m.cfg.Witness.Forget(kv.BlockFeedPrefix(g.cidr), func(k string) bool { return listed[k] })
	}
}

// fail notes an error; a lost compare-and-set is not one (a record changed
// meanwhile: the next pass sees it).
func (g *poolGC) fail(err error) {
	if err != nil && !errors.Is(err, kv.ErrConflict) {
		g.errs = append(g.errs, err)
	}
}

// orphanAge says whether an address record (at version ver) is this host's
// and old enough for the sweep to take it for an orphan when no endpoint
// has it: created more than OrphanAfter ago by the record, or first listed
// by this process more than OrphanAfter ago (its witness). The second
// holds when the record's time cannot be believed: a clock set back
// after the record was written (NTP stepping a clock that ran days ahead,
// a restored snapshot) makes every record look made in the future, and
// orphans would stay until the clock caught up.
func (m *IPAM) orphanAge(pool string, ver uint64, a kv.Address, now time.Time) bool {
	if a.Host != m.cfg.Host {
		return false
	}
	seen := m.cfg.Witness.Saw(kv.AddressPath(pool, a.IP), strconv.FormatUint(ver, 10), now)
	return now.Sub(a.Created) > OrphanAfter || now.Sub(seen) > OrphanAfter
}

// Orphans lists, changing nothing in the store (its witness notes what it
// lists), the address records that the next sweep
// of CollectGone would take for this host's orphans: endpoint addresses of
// this host older than OrphanAfter that no endpoint of the host has.
func (m *IPAM) Orphans(ctx context.Context, local Holding) ([]kv.Address, error) {
	now := m.cfg.Now()
	var out []kv.Address
	for pool, held := range local() {
		if _, err := kv.ListJSON(ctx, m.store, kv.AddressPrefix(pool), func(_ string, ver uint64, a kv.Address) error {
			if a.Kind == kv.KindEndpoint && m.orphanAge(pool, ver, a, now) && !held[a.IP] {
				out = append(out, a)
			}
			return nil
		}, m.skipped); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(out, func(a, b kv.Address) int { return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.IP, b.IP)) })
	return out, nil
}
