package kv

import (
	"context"
	"sort"
	"strings"
	"sync"
)

// Memory is an in-process Store for tests.
type Memory struct {
	mu     sync.Mutex
	data   map[string]Pair
	rev    *revision
	claims memoryClaims
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{data: map[string]Pair{}, rev: newRevision(0)}
}

func (m *Memory) String() string { return "memory store" }

func (m *Memory) Close() error { return nil }

func (m *Memory) Get(_ context.Context, key string) (Pair, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.data[key]
	if !ok {
		return Pair{}, ErrNotFound
	}
	p.Value = append([]byte(nil), p.Value...)
	return p, nil
}

func (m *Memory) Put(_ context.Context, key string, value []byte, version uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if version != Any && m.data[key].Version != version {
		return 0, ErrConflict
	}
	v := m.rev.bump()
	m.data[key] = Pair{Key: key, Value: append([]byte(nil), value...), Version: v}
	return v, nil
}

func (m *Memory) Delete(_ context.Context, key string, version uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.data[key]
	if !ok {
		return nil
	}
	if version != 0 && p.Version != version {
		return ErrConflict
	}
	delete(m.data, key)
	m.rev.bump()
	return nil
}

func (m *Memory) List(_ context.Context, prefix string) ([]Pair, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Pair
	for k, p := range m.data {
		if strings.HasPrefix(k, prefix) {
			p.Value = append([]byte(nil), p.Value...)
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, m.rev.current(), nil
}

func (m *Memory) Watch(ctx context.Context, prefix string, index uint64) ([]Pair, uint64, error) {
	if err := m.rev.wait(ctx, index); err != nil {
		return nil, index, err
	}
	return m.List(ctx, prefix)
}

func (m *Memory) Txn(_ context.Context, ops []Op) (uint64, error) {
	if err := checkOps(ops); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, op := range ops {
		p, ok := m.data[op.Key]
		switch {
		case op.Delete && op.Version != 0 && ok && p.Version != op.Version:
			return 0, ErrConflict
		case !op.Delete && op.Version != Any && p.Version != op.Version:
			return 0, ErrConflict
		}
	}
	v := m.rev.bump()
	for _, op := range ops {
		if op.Check {
			continue
		}
		if op.Delete {
			delete(m.data, op.Key)
		} else {
			m.data[op.Key] = Pair{Key: op.Key, Value: append([]byte(nil), op.Value...), Version: v}
		}
	}
	return v, nil
}
