package ipam

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/kv"
)

// probes is how many free-looking blocks a claim tries before it reads the
// pool's whole block list; window is how many of the first free ones its
// second probe picks among (doubling at each probe after).
const (
	probes = 8
	window = 64
)

// leaseLocked takes block b for this host, or renews its lease, by
// compare-and-set over version (0: the block must be free). Called with
// pc.mu held.
func (m *IPAM) leaseLocked(ctx context.Context, pc *poolCache, b netip.Prefix, version uint64) error {
	blk := kv.Block{CIDR: b.String(), Pool: pc.cidr, Host: m.cfg.Host, Expires: m.cfg.Now().Add(m.cfg.LeaseTTL).UTC()}
	_, mine := pc.own[b]
	var v uint64
	var err error
	if mine {
		v, err = kv.PutJSON(ctx, m.store, kv.BlockPath(pc.cidr, blk.CIDR), blk, version)
	} else {
		v, err = m.writeBlock(ctx, blk, version)
	}
	if err != nil {
		return err
	}
	if !mine {
		m.log.WithFields(logrus.Fields{"pool": pc.cidr, "block": blk.CIDR, "expires": blk.Expires}).Info("block claimed")
	}
	pc.own[b] = ownBlock{version: v, expires: blk.Expires}
	delete(pc.taken, b)
	return nil
}

// claimLocked claims a new block for this host and returns it; an invalid
// prefix means "look again", full that every block is held. Called with
// pc.mu held.
func (m *IPAM) claimLocked(ctx context.Context, pc *poolCache) (b netip.Prefix, full bool, err error) {
	for probe := range probes {
		// The lowest free block first (a quiet pool fills in order), then
		// at random among the first free ones, in a window that doubles
		// with every race lost: hosts that lost the same race spread out
		// instead of meeting again.
		free := pc.freeBlocks(window << probe)
		if len(free) == 0 {
			break
		}
		b := free[0]
		if probe > 0 {
			b = free[rand.IntN(len(free))]
		}
		err := m.leaseLocked(ctx, pc, b, 0)
		if err == nil {
			return b, false, nil
		}
		if !errors.Is(err, kv.ErrConflict) {
			return netip.Prefix{}, false, err
		}
		var cur kv.Block
		v, gerr := kv.GetJSON(ctx, m.store, kv.BlockPath(pc.cidr, b.String()), &cur)
		var derr *kv.DecodeError
		switch {
		case errors.Is(gerr, kv.ErrNotFound):
		case errors.As(gerr, &derr):
			pc.taken[b] = true
		case gerr != nil:
			return netip.Prefix{}, false, gerr
		case cur.Host == m.cfg.Host:
			pc.own[b] = ownBlock{version: v, expires: cur.Expires} // an earlier claim whose answer was lost
			return b, false, nil
		default:
			pc.taken[b] = true
		}
	}
	// Probing found nothing free: read every block and host once, and
	// take a free block or one whose host is gone.
	live, err := kv.ReadLiveness(ctx, m.store, m.cfg.Witness, m.cfg.Now(), m.cfg.LeaseTTL, m.skipped)
	if err != nil {
		return netip.Prefix{}, false, err
	}
	if err := m.readBlocks(ctx, pc, &live); err != nil {
		return netip.Prefix{}, false, err
	}
	free := pc.freeBlocks(window << probes)
	if len(free) == 0 {
		return netip.Prefix{}, true, nil
	}
	b = free[rand.IntN(len(free))]
	var cur kv.Block
	v, err := kv.GetJSON(ctx, m.store, kv.BlockPath(pc.cidr, b.String()), &cur)
	if err != nil && !errors.Is(err, kv.ErrNotFound) {
		return netip.Prefix{}, false, err
	}
	if err := m.leaseLocked(ctx, pc, b, v); errors.Is(err, kv.ErrConflict) {
		return netip.Prefix{}, false, nil
	} else if err != nil {
		return netip.Prefix{}, false, err
	}
	return b, false, nil
}

// freeBlocks is up to n of the first blocks of the range that are neither
// this host's nor known to be held, in order.
func (pc *poolCache) freeBlocks(n int) []netip.Prefix {
	var out []netip.Prefix
	pc.layout.Blocks(func(b netip.Prefix) bool {
		if _, own := pc.own[b]; !own && !pc.taken[b] && pc.layout.hasAllocatable(b) {
			out = append(out, b)
		}
		return len(out) < n
	})
	return out
}

// RenewLeases extends every block lease of this host that has used more than
// half of its lifetime. The plugin calls it periodically. The blocks of the
// pools the host allocates in are known; every pool's blocks are read only
// every quarter lease lifetime (and first), for blocks of pools this run has
// not allocated in yet.
func (m *IPAM) RenewLeases(ctx context.Context) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	now := m.cfg.Now()
	m.mu.Lock()
	scan := m.scanned.IsZero() || now.Sub(m.scanned) >= m.cfg.LeaseTTL/4
	caches := make([]*poolCache, 0, len(m.cached))
	for _, pc := range m.cached {
		caches = append(caches, pc)
	}
	m.mu.Unlock()
	if err := m.trimFeed(ctx); err != nil {
		return err
	}
	if scan {
		if err := m.renewAll(ctx, now); err != nil {
			return err
		}
		m.mu.Lock()
		m.scanned = now
		m.mu.Unlock()
	}
	var errs []error
	for _, pc := range caches {
		pc.mu.Lock()
		for b, ob := range pc.own {
			if ob.expires.Sub(now) > m.cfg.LeaseTTL/2 {
				continue
			}
			if err := m.leaseLocked(ctx, pc, b, ob.version); errors.Is(err, kv.ErrConflict) {
				// Changed meanwhile: by this host's full renewal, or
				// taken by another host while this one was away.
				var cur kv.Block
				v, gerr := kv.GetJSON(ctx, m.store, kv.BlockPath(pc.cidr, b.String()), &cur)
				switch {
				case gerr == nil && cur.Host == m.cfg.Host:
					pc.own[b] = ownBlock{version: v, expires: cur.Expires}
				case gerr == nil || errors.Is(gerr, kv.ErrNotFound):
					delete(pc.own, b)
				default:
					errs = append(errs, gerr)
				}
			} else if err != nil {
				errs = append(errs, err)
			}
		}
		pc.mu.Unlock()
	}
	return errors.Join(errs...)
}

// renewAll renews this host's blocks in every pool of the cluster.
func (m *IPAM) renewAll(ctx context.Context, now time.Time) error {
	pools, err := m.pools(ctx)
	if err != nil {
		return err
	}
	for cidr := range pools {
		_, err := kv.ListJSON(ctx, m.store, kv.BlockPrefix(cidr), func(_ string, ver uint64, b kv.Block) error {
			if b.Host != m.cfg.Host || b.Expires.Sub(now) > m.cfg.LeaseTTL/2 {
				return nil
			}
			p, perr := netip.ParsePrefix(b.CIDR)
			if perr != nil {
				return nil
			}
			blk := kv.Block{CIDR: b.CIDR, Pool: cidr, Host: m.cfg.Host, Expires: now.Add(m.cfg.LeaseTTL).UTC()}
			v, err := kv.PutJSON(ctx, m.store, kv.BlockPath(cidr, b.CIDR), blk, ver)
			if errors.Is(err, kv.ErrConflict) {
				return nil
			}
			if err != nil {
				return err
			}
			m.mu.Lock()
			pc := m.cached[cidr]
			m.mu.Unlock()
			if pc != nil {
				pc.mu.Lock()
				pc.own[p] = ownBlock{version: v, expires: blk.Expires}
				pc.mu.Unlock()
			}
			return nil
		}, m.skipped)
		if err != nil {
			return err
		}
	}
	return nil
}
