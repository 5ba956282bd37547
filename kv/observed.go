package kv

import (
	"context"
	"errors"
	"time"
)

// Observer hears of every store call: its operation (get, put, delete,
// list, txn, watch), how long it took and how it ended.
type Observer func(op string, took time.Duration, err error)

// Observed wraps a store so that o hears of each call (tartan's metrics).
// A watch is heard of only when it fails: its time is the store's wait for
// a change, not its latency.
func Observed(s Store, o Observer) Store { return observed{s, o} }

type observed struct {
	Store
	o Observer
}

func (s observed) Get(ctx context.Context, key string) (Pair, error) {
	start := time.Now()
	p, err := s.Store.Get(ctx, key)
	s.o("get", time.Since(start), err)
	return p, err
}

func (s observed) Put(ctx context.Context, key string, value []byte, version uint64) (uint64, error) {
	start := time.Now()
	v, err := s.Store.Put(ctx, key, value, version)
	s.o("put", time.Since(start), err)
	return v, err
}

func (s observed) Delete(ctx context.Context, key string, version uint64) error {
	start := time.Now()
	err := s.Store.Delete(ctx, key, version)
	s.o("delete", time.Since(start), err)
	return err
}

func (s observed) List(ctx context.Context, prefix string) ([]Pair, uint64, error) {
	start := time.Now()
	ps, idx, err := s.Store.List(ctx, prefix)
	s.o("list", time.Since(start), err)
	return ps, idx, err
}

func (s observed) Watch(ctx context.Context, prefix string, index uint64) ([]Pair, uint64, error) {
	ps, idx, err := s.Store.Watch(ctx, prefix, index)
	if err != nil && !errors.Is(err, context.Canceled) {
		s.o("watch", 0, err)
	}
	return ps, idx, err
}

func (s observed) Txn(ctx context.Context, ops []Op) (uint64, error) {
	start := time.Now()
	v, err := s.Store.Txn(ctx, ops)
	s.o("txn", time.Since(start), err)
	return v, err
}

// Unwrap is the store observed (ClaimsOf looks through the wrapper).
func (s observed) Unwrap() Store { return s.Store }
