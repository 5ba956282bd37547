package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/tartan-net/tartan/kv"
)

// ReleasePool drops this host's hold on the pool. The host's empty blocks
// are returned. The last holder marks the pool as being released, then
// looks again: holder keys are written only while the pool is not marked
// (register checks the record's version), so what it sees then is final.
// With no holder left it removes the pool's records, each by compare-and-set
// on the version read, and the pool record last, so that a concurrent
// registration of the same subnet waits for (or finishes) the removal instead
// of losing what it writes. (Docker's own ReleasePool calls reach this only
// when no network of the host uses the pool: plugin/server.go.)
func (m *IPAM) ReleasePool(ctx context.Context, id PoolID) error {
	if err := m.ready(ctx); err != nil {
		return err
	}
	cidr := id.CIDR.String()
	m.forget(cidr)
	holder := m.holder(id.Space)
	err := kv.Retry(ctx, func() error {
		var p kv.Pool
		pv, err := kv.GetJSON(ctx, m.store, kv.PoolPath(cidr), &p)
		if errors.Is(err, kv.ErrNotFound) {
			return m.store.Delete(ctx, kv.HolderPath(cidr, holder), 0)
		}
		if err != nil {
			return fmt.Errorf("release pool %s: %w", cidr, err)
		}
		if p.Releasing {
			return m.finishRelease(ctx, cidr)
		}
		others, err := kv.PoolHolders(ctx, m.store, cidr, p.Holders)
		if err != nil {
			return fmt.Errorf("release pool %s: %w", cidr, err)
		}
		delete(others, holder)
		legacy := p.Holders[holder]
		delete(p.Holders, holder)
		last := len(others) == 0
		p.Releasing = last
		ops := []kv.Op{{Key: kv.HolderPath(cidr, holder), Delete: true}}
		if last || legacy {
			b, err := json.Marshal(p)
			if err != nil {
				return err
			}
			ops = append(ops, kv.Op{Key: kv.PoolPath(cidr), Value: b, Version: pv})
		}
		if _, err := m.store.Txn(ctx, ops); errors.Is(err, kv.ErrConflict) {
			return kv.ErrRetry
		} else if err != nil {
			return fmt.Errorf("release pool %s: %w", cidr, err)
		}
		if last {
			m.log.WithField("pool", cidr).Info("last holder released the pool; removing it")
			return m.finishRelease(ctx, cidr)
		}
		return m.releaseEmptyBlocks(ctx, cidr)
	})
	if errors.Is(err, kv.ErrRetry) {
		return fmt.Errorf("release pool %s: too many concurrent changes: %w", cidr, err)
	}
	return err
}

// finishRelease removes a pool marked as being released: its network record
// and VNI, holders, route exceptions, blocks and addresses, then the pool
// record. If a holder is there after all (one that joined while the releaser
// decided), the mark is taken back instead. Every delete is compare-and-set
// on the version read; anyone may run it (the releaser, or a host
// registering the subnet again after the releaser died half way).
func (m *IPAM) finishRelease(ctx context.Context, cidr string) error {
	var pool kv.Pool
	pv, err := kv.GetJSON(ctx, m.store, kv.PoolPath(cidr), &pool)
	if errors.Is(err, kv.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !pool.Releasing {
		return nil
	}
	holders, err := kv.PoolHolders(ctx, m.store, cidr, pool.Holders)
	if err != nil {
		return err
	}
	if len(holders) > 0 {
		pool.Releasing = false
		if _, err := kv.PutJSON(ctx, m.store, kv.PoolPath(cidr), pool, pv); err != nil && !errors.Is(err, kv.ErrConflict) {
			return fmt.Errorf("keep pool %s, which a host joined while it was released: %w", cidr, err)
		}
		m.log.WithField("pool", cidr).Info("pool kept: a host joined it while its last holder released it")
		return nil
	}
	if err := kv.DeleteNetworkCAS(ctx, m.store, cidr); err != nil {
		return fmt.Errorf("remove network record of pool %s: %w", cidr, err)
	}
	for _, prefix := range []string{kv.HolderPrefix(cidr), kv.ExceptionPrefix(cidr), kv.AddressPrefix(cidr), kv.BlockPrefix(cidr), kv.BlockFeedPrefix(cidr)} {
		if err := kv.DeletePrefixCAS(ctx, m.store, prefix); err != nil {
			return fmt.Errorf("remove pool %s: %w", cidr, err)
		}
	}
	if err := m.store.Delete(ctx, kv.PoolPath(cidr), pv); err != nil && !errors.Is(err, kv.ErrConflict) {
		return fmt.Errorf("remove pool %s: %w", cidr, err)
	}
	return nil
}

// releaseEmptyBlocks gives back this host's blocks that hold no address.
func (m *IPAM) releaseEmptyBlocks(ctx context.Context, cidr string) error {
	pc := &poolCache{cidr: cidr}
	if err := m.readPool(ctx, pc); err != nil {
		return err
	}
	if err := m.readBlocks(ctx, pc, nil); err != nil {
		return err
	}
	used, err := m.usedAddresses(ctx, cidr)
	if err != nil {
		return err
	}
	for b, ob := range pc.own {
		empty := true
		for a := range used {
			if b.Contains(a) {
				empty = false
				break
			}
		}
		if empty {
			blk := kv.Block{CIDR: b.String(), Host: m.cfg.Host, Expires: ob.expires}
			if err := m.dropBlock(ctx, cidr, blk, ob.version); err != nil && !errors.Is(err, kv.ErrConflict) {
				return err
			}
		}
	}
	return nil
}
