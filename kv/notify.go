package kv

import (
	"context"
	"sync"
)

// revision is a store-wide write counter that watchers can wait on. The
// embedded stores use it: every write bumps it and wakes all waiters.
type revision struct {
	mu      sync.Mutex
	rev     uint64
	changed chan struct{}
}

func newRevision(start uint64) *revision {
	return &revision{rev: start, changed: make(chan struct{})}
}

// bump advances the revision by one and wakes waiters. Call with the store's
// write lock held so that revisions follow the order of writes.
func (r *revision) bump() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.set(r.rev + 1)
	return r.rev
}

// advance moves the revision to at least to and wakes waiters.
func (r *revision) advance(to uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if to > r.rev {
		r.set(to)
	}
}

func (r *revision) set(to uint64) {
	r.rev = to
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *revision) current() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rev
}

// wait returns when the revision is past index or ctx ends.
func (r *revision) wait(ctx context.Context, index uint64) error {
	for {
		r.mu.Lock()
		rev, ch := r.rev, r.changed
		r.mu.Unlock()
		if rev > index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
