package kv

import (
	"cmp"
	"context"
	"maps"
	"slices"
	"time"
)

// HostReport is one host as the store has it, for operators: its record,
// whether it is alive by the rule routing and allocation share
// (Liveness), and the blocks it leases.
type HostReport struct {
	ID      string        `json:"id"`
	Address string        `json:"address,omitempty"`
	Version string        `json:"version,omitempty"`
	Renewed time.Time     `json:"renewed"`
	Alive   bool          `json:"alive"`
	Known   bool          `json:"known"` // it has a host record (a block's host may not)
	Blocks  []BlockReport `json:"blocks"`
}

// BlockReport is one block lease of a host.
type BlockReport struct {
	Pool    string    `json:"pool"`
	Block   string    `json:"block"`
	Expires time.Time `json:"expires"`
	Alive   bool      `json:"alive"` // it still counts as its host's (Liveness.BlockAlive)
}

// Census lists every host the store knows, from its host records and its
// block leases, in ID order. skipped hears of records it cannot read.
func Census(ctx context.Context, s Store, now time.Time, ttl time.Duration, skipped func(*DecodeError)) ([]HostReport, error) {
	l, err := ReadLiveness(ctx, s, now, ttl, skipped)
	if err != nil {
		return nil, err
	}
	hosts := map[string]*HostReport{}
	get := func(id string) *HostReport {
		if h, ok := hosts[id]; ok {
			return h
		}
		rec, known := l.Hosts[id]
		h := &HostReport{ID: id, Address: rec.Address, Version: rec.Version, Renewed: l.LastRenewed(id), Alive: l.HostAlive(id), Known: known, Blocks: []BlockReport{}}
		hosts[id] = h
		return h
	}
	for id := range l.Hosts {
		get(id)
	}
	if _, err := ListJSON(ctx, s, BlocksPrefix, func(_ string, _ uint64, b Block) error {
		h := get(b.Host)
		h.Blocks = append(h.Blocks, BlockReport{Pool: b.Pool, Block: b.CIDR, Expires: b.Expires, Alive: l.BlockAlive(b)})
		return nil
	}, skipped); err != nil {
		return nil, err
	}
	out := make([]HostReport, 0, len(hosts))
	for _, id := range slices.Sorted(maps.Keys(hosts)) {
		h := hosts[id]
		slices.SortFunc(h.Blocks, func(a, b BlockReport) int { return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.Block, b.Block)) })
		out = append(out, *h)
	}
	return out, nil
}
