package kv

import (
	"cmp"
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// HostReport is one host as the store has it, for operators: its record,
// whether it is alive by the rule routing and allocation share
// (Liveness), and the blocks it leases.
type HostReport struct {
	ID      string `json:"id"`
	Address string `json:"address,omitempty"`
	Version string `json:"version,omitempty"`
	// Renewed is the time the host wrote into its last renewal, by its own
	// clock (shown, never compared with this host's); Seen is when this
	// host last saw it renew, by its own clock (what Alive is judged by).
	Renewed time.Time     `json:"renewed"`
	Seen    time.Time     `json:"seen"`
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
// block leases, in ID order, alive or not as w has seen them renew.
// skipped hears of records it cannot read.
func Census(ctx context.Context, s Store, w *Witness, now time.Time, ttl time.Duration, skipped func(*DecodeError)) ([]HostReport, error) {
	l, err := ReadLiveness(ctx, s, w, now, ttl, skipped)
	if err != nil {
		return nil, err
	}
	renewals, err := ReadRenewals(ctx, s, skipped)
	if err != nil {
		return nil, err
	}
	hosts := map[string]*HostReport{}
	get := func(id string) *HostReport {
		if h, ok := hosts[id]; ok {
			return h
		}
		rec, known := l.Hosts[id]
		renewed := renewals[id]
		if rec.Renewed.After(renewed) {
			renewed = rec.Renewed
		}
		h := &HostReport{ID: id, Address: rec.Address, Version: rec.Version, Renewed: renewed, Seen: l.LastSeen(id), Alive: l.HostAlive(id), Known: known, Blocks: []BlockReport{}}
		hosts[id] = h
		return h
	}
	for id := range l.Hosts {
		get(id)
	}
	var blocks []Block
	if _, err := ListJSON(ctx, s, BlocksPrefix, func(key string, _ uint64, b Block) error {
		// The pool it is listed under, whatever the record says (the
		// witness's key).
		if pool, _, ok := strings.Cut(strings.TrimPrefix(key, BlocksPrefix), "/"); ok {
			if p, err := PrefixFromKey(pool); err == nil {
				b.Pool = p.String()
			}
		}
		blocks = append(blocks, b)
		return nil
	}, skipped); err != nil {
		return nil, err
	}
	l.ObserveBlocks(w, blocks)
	w.Forget(BlocksPrefix, func(k string) bool { _, ok := l.BlockSeen[k]; return ok })
	for _, b := range blocks {
		h := get(b.Host)
		h.Blocks = append(h.Blocks, BlockReport{Pool: b.Pool, Block: b.CIDR, Expires: b.Expires, Alive: l.BlockAlive(b)})
	}
	out := make([]HostReport, 0, len(hosts))
	for _, id := range slices.Sorted(maps.Keys(hosts)) {
		h := hosts[id]
		slices.SortFunc(h.Blocks, func(a, b BlockReport) int { return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.Block, b.Block)) })
		out = append(out, *h)
	}
	return out, nil
}

// PoolReport is one pool and its network as the store has them, for
// operators (tartan networks).
type PoolReport struct {
	Pool      string       `json:"pool"`
	Range     string       `json:"range,omitempty"`
	BlockBits int          `json:"blockBits"`
	Gateway   string       `json:"gateway,omitempty"`
	Auto      bool         `json:"auto,omitempty"`
	Releasing bool         `json:"releasing,omitempty"`
	Network   *PoolNetwork `json:"network,omitempty"` // none until a driver made a network on the pool
	Blocks    int          `json:"blocks"`
	Addresses int          `json:"addresses"`
}

// Pools lists every pool with its network and how many blocks and
// addresses it holds, in pool order. It reads every block and address key:
// an operator's question, not a request's.
func Pools(ctx context.Context, s Store, skipped func(*DecodeError)) ([]PoolReport, error) {
	pools := map[string]*PoolReport{}
	if _, err := ListJSON(ctx, s, PoolsPrefix, func(_ string, _ uint64, p Pool) error {
		pools[p.CIDR] = &PoolReport{Pool: p.CIDR, Range: p.Range, BlockBits: p.BlockBits, Gateway: p.Gateway, Auto: p.Auto, Releasing: p.Releasing}
		return nil
	}, skipped); err != nil {
		return nil, err
	}
	if _, err := ListJSON(ctx, s, NetworksPrefix, func(_ string, _ uint64, n PoolNetwork) error {
		if p, ok := pools[n.Pool]; ok {
			p.Network = &n
		}
		return nil
	}, skipped); err != nil {
		return nil, err
	}
	out := make([]PoolReport, 0, len(pools))
	for _, cidr := range slices.Sorted(maps.Keys(pools)) {
		p := pools[cidr]
		for prefix, n := range map[string]*int{BlockPrefix(cidr): &p.Blocks, AddressPrefix(cidr): &p.Addresses} {
			ps, _, err := s.List(ctx, prefix)
			if err != nil {
				return nil, err
			}
			for _, kv := range ps {
				if !IsFolder(kv.Key) {
					*n++
				}
			}
		}
		out = append(out, *p)
	}
	return out, nil
}

// Addresses lists a pool's address records in address order.
func Addresses(ctx context.Context, s Store, pool string, skipped func(*DecodeError)) ([]Address, error) {
	var out []Address
	if _, err := ListJSON(ctx, s, AddressPrefix(pool), func(_ string, _ uint64, a Address) error {
		out = append(out, a)
		return nil
	}, skipped); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Address) int {
		x, errx := netip.ParseAddr(a.IP)
		y, erry := netip.ParseAddr(b.IP)
		if errx != nil || erry != nil {
			return cmp.Compare(a.IP, b.IP)
		}
		return x.Compare(y)
	})
	return out, nil
}
