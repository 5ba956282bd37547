package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/tartan-net/tartan/kv"
)

// feedWrite is a block feed entry this host wrote.
type feedWrite struct {
	key     string
	version uint64
	at      time.Time
}

// writeBlock writes a block that changes hands (a claim) at version, with
// its feed entry in the same transaction.
func (m *IPAM) writeBlock(ctx context.Context, blk kv.Block, version uint64) (uint64, error) {
	return m.changeBlock(ctx, blk, kv.Op{Key: kv.BlockPath(blk.Pool, blk.CIDR), Version: version}, false)
}

// dropBlock removes a block read at version, with its feed entry.
func (m *IPAM) dropBlock(ctx context.Context, pool string, blk kv.Block, version uint64) error {
	blk.Pool = pool
	_, err := m.changeBlock(ctx, blk, kv.Op{Key: kv.BlockPath(pool, blk.CIDR), Delete: true, Version: version}, true)
	return err
}

func (m *IPAM) changeBlock(ctx context.Context, blk kv.Block, op kv.Op, deleted bool) (uint64, error) {
	now := m.cfg.Now().UTC()
	entry, err := json.Marshal(kv.BlockChange{Block: blk, Deleted: deleted, At: now})
	if err != nil {
		return 0, err
	}
	if !deleted {
		if op.Value, err = json.Marshal(blk); err != nil {
			return 0, err
		}
	}
	feed := kv.BlockFeedPath(blk.Pool, blk.CIDR)
	v, err := m.store.Txn(ctx, []kv.Op{op, {Key: feed, Value: entry, Version: kv.Any}})
	if err != nil {
		return 0, err
	}
	m.mu.Lock()
	m.feed = append(m.feed, feedWrite{key: feed, version: v, at: now})
	m.mu.Unlock()
	return v, nil
}

// trimFeed removes the feed entries this host wrote that are older than
// kv.FeedRetention, in as few transactions as it can (each wakes every
// watcher of the feed). An entry rewritten since (another host claimed the
// block) is left to its writer.
func (m *IPAM) trimFeed(ctx context.Context) error {
	now := m.cfg.Now()
	m.mu.Lock()
	var due, keep []feedWrite
	for _, f := range m.feed {
		if now.Sub(f.at) >= kv.FeedRetention {
			due = append(due, f)
		} else {
			keep = append(keep, f)
		}
	}
	m.feed = keep
	m.mu.Unlock()
	var errs []error
	for chunk := range slices.Chunk(due, kv.MaxTxnOps) {
		ops := make([]kv.Op, 0, len(chunk))
		for _, f := range chunk {
			ops = append(ops, kv.Op{Key: f.key, Delete: true, Version: f.version})
		}
		if _, err := m.store.Txn(ctx, ops); errors.Is(err, kv.ErrConflict) {
			for _, op := range ops {
				if err := m.store.Delete(ctx, op.Key, op.Version); err != nil && !errors.Is(err, kv.ErrConflict) {
					errs = append(errs, err)
				}
			}
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
