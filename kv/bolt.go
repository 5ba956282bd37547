package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrLocked: another process (another tartan plugin on this host) has the
// embedded store open.
var ErrLocked = errors.New("in use by another process")

var (
	boltData = []byte("kv")
	boltMeta = []byte("meta")
	boltRev  = []byte("rev")
)

// Bolt is the embedded single-host Store: one bbolt file in the plugin's
// state directory. Values are stored behind their 8-byte version.
type Bolt struct {
	db   *bolt.DB
	path string
	rev  *revision
}

// OpenBolt opens (creating if needed) the bbolt file at path.
func OpenBolt(path string) (*Bolt, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open embedded store %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open embedded store %s: %w", path, err)
	}
	var rev uint64
	err = db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(boltData); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(boltMeta)
		if err != nil {
			return err
		}
		if b := meta.Get(boltRev); len(b) == 8 {
			rev = binary.BigEndian.Uint64(b)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialise embedded store %s: %w", path, err)
	}
	db.MaxBatchDelay = time.Millisecond // what a lone writer waits for company
	return &Bolt{db: db, path: path, rev: newRevision(rev)}, nil
}

func (b *Bolt) String() string { return "embedded store " + b.path }

func (b *Bolt) Close() error { return b.db.Close() }

// versionOf reads the version in front of a stored value. A value too
// short to hold one can only come from a damaged file: it is an error for
// the key, never a panic, so that a plugin with a damaged store still starts.
func (b *Bolt) versionOf(key string, raw []byte) (uint64, error) {
	if len(raw) < 8 {
		return 0, fmt.Errorf("value of %s in %s is damaged (%d bytes, shorter than its 8-byte version)", key, b, len(raw))
	}
	return binary.BigEndian.Uint64(raw[:8]), nil
}

func (b *Bolt) decode(key string, raw []byte) (Pair, error) {
	v, err := b.versionOf(key, raw)
	if err != nil {
		return Pair{Key: key, Err: err}, err
	}
	return Pair{Key: key, Version: v, Value: append([]byte(nil), raw[8:]...)}, nil
}

func (b *Bolt) Get(_ context.Context, key string) (Pair, error) {
	var p Pair
	err := b.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(boltData).Get([]byte(key))
		if raw == nil {
			return ErrNotFound
		}
		var err error
		p, err = b.decode(key, raw)
		return err
	})
	if err != nil {
		return Pair{}, err
	}
	return p, nil
}

// write runs fn in a write transaction that also advances the revision; the
// in-memory revision is bumped only after the commit succeeded. Concurrent
// writers share one commit (bbolt's Batch), so that many endpoints created at
// once do not each wait for their own fsync; a writer whose fn fails is run
// again on its own, so fn must only depend on the transaction it is given.
func (b *Bolt) write(fn func(data *bolt.Bucket, next uint64) error) (uint64, error) {
	var next uint64
	err := b.db.Batch(func(tx *bolt.Tx) error {
		meta := tx.Bucket(boltMeta)
		next = 1
		if raw := meta.Get(boltRev); len(raw) == 8 {
			next = binary.BigEndian.Uint64(raw) + 1
		}
		if err := fn(tx.Bucket(boltData), next); err != nil {
			return err
		}
		var buf [8]byte
		binary.BigEndian.PutUint64(buf[:], next)
		return meta.Put(boltRev, buf[:])
	})
	if err != nil {
		return 0, err
	}
	b.rev.advance(next)
	return next, nil
}

func (b *Bolt) Put(_ context.Context, key string, value []byte, version uint64) (uint64, error) {
	return b.write(func(data *bolt.Bucket, next uint64) error {
		var cur uint64
		if raw := data.Get([]byte(key)); raw != nil {
			var err error
			if cur, err = b.versionOf(key, raw); err != nil && version != Any {
				return err // no compare-and-set against an unknown version; Delete(key, 0) removes it
			}
		}
		if version != Any && cur != version {
			return ErrConflict
		}
		buf := make([]byte, 8+len(value))
		binary.BigEndian.PutUint64(buf, next)
		copy(buf[8:], value)
		return data.Put([]byte(key), buf)
	})
}

func (b *Bolt) Delete(_ context.Context, key string, version uint64) error {
	_, err := b.write(func(data *bolt.Bucket, _ uint64) error {
		raw := data.Get([]byte(key))
		if raw == nil {
			return nil
		}
		if version == 0 {
			return data.Delete([]byte(key))
		}
		cur, err := b.versionOf(key, raw)
		if err != nil {
			return err
		}
		if cur != version {
			return ErrConflict
		}
		return data.Delete([]byte(key))
	})
	return err
}

func (b *Bolt) Txn(_ context.Context, ops []Op) (uint64, error) {
	if err := checkOps(ops); err != nil {
		return 0, err
	}
	return b.write(func(data *bolt.Bucket, next uint64) error {
		for _, op := range ops {
			raw := data.Get([]byte(op.Key))
			var cur uint64
			if raw != nil {
				var err error
				if cur, err = b.versionOf(op.Key, raw); err != nil && !(op.Delete && op.Version == 0) {
					return err
				}
			}
			switch {
			case op.Delete && op.Version != 0 && raw != nil && cur != op.Version:
				return ErrConflict
			case !op.Delete && op.Version != Any && cur != op.Version:
				return ErrConflict
			}
		}
		for _, op := range ops {
			var err error
			if op.Check {
				continue
			}
			if op.Delete {
				err = data.Delete([]byte(op.Key))
			} else {
				buf := make([]byte, 8+len(op.Value))
				binary.BigEndian.PutUint64(buf, next)
				copy(buf[8:], op.Value)
				err = data.Put([]byte(op.Key), buf)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func (b *Bolt) List(_ context.Context, prefix string) ([]Pair, uint64, error) {
	var out []Pair
	var index uint64
	err := b.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(boltData).Cursor()
		pre := []byte(prefix)
		for k, v := c.Seek(pre); k != nil && len(k) >= len(pre) && string(k[:len(pre)]) == prefix; k, v = c.Next() {
			p, _ := b.decode(string(k), v) // a damaged value is listed with its Err
			out = append(out, p)
		}
		if raw := tx.Bucket(boltMeta).Get(boltRev); len(raw) == 8 {
			index = binary.BigEndian.Uint64(raw)
		}
		return nil
	})
	return out, index, err
}

func (b *Bolt) Watch(ctx context.Context, prefix string, index uint64) ([]Pair, uint64, error) {
	if err := b.rev.wait(ctx, index); err != nil {
		return nil, index, err
	}
	return b.List(ctx, prefix)
}
