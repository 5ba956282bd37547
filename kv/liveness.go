package kv

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Liveness says which hosts are alive: the rule that routing, allocation
// and collection share. A host is alive while this observer saw it renew
// (its renewal record or its host record change) within the lease lifetime,
// timed on the observer's own clock (Witness): never by comparing the
// time a host wrote with another machine's clock, so that clock skew
// between hosts decides nothing. A block counts while this observer saw
// its lease renewed within the lifetime, or its host is alive.
type Liveness struct {
	Hosts map[string]Host
	// Seen is when this observer last saw each host renew (Witness.Host).
	Seen map[string]time.Time
	// BlockSeen is when this observer last saw each block's lease renewed,
	// by BlockPath (Witness.Block); a block it has no sighting of counts
	// as seen now.
	BlockSeen map[string]time.Time
	Now       time.Time
	TTL       time.Duration
}

// LastSeen is when this observer last saw the host renew (zero: never).
func (l Liveness) LastSeen(id string) time.Time { return l.Seen[id] }

// HostAlive says whether the host has a record and was seen renewing
// within the lease lifetime.
func (l Liveness) HostAlive(id string) bool {
	_, known := l.Hosts[id]
	seen, ok := l.Seen[id]
	return known && ok && l.Now.Sub(seen) < l.TTL
}

// BlockAlive says whether a block still counts as its host's.
func (l Liveness) BlockAlive(b Block) bool {
	seen, ok := l.BlockSeen[BlockPath(b.Pool, b.CIDR)]
	return !ok || l.Now.Sub(seen) < l.TTL || l.HostAlive(b.Host)
}

// BlockHolding is the block of blocks that holds ip, whatever the blocks'
// sizes (records made with different block sizes may share a pool): sizes
// are the prefix lengths of blocks, tried in order. It is the one rule for
// "which block holds this address".
func BlockHolding[T any](blocks map[netip.Prefix]T, sizes []int, ip netip.Addr) (T, bool) {
	for _, bits := range sizes {
		if b, ok := blocks[netip.PrefixFrom(ip, bits).Masked()]; ok {
			return b, true
		}
	}
	var none T
	return none, false
}

// Witness times what it sees change on its own clock, as Kubernetes'
// node lifecycle controller times node leases: a record is as fresh as the
// first time this observer saw its current value, whatever time the record
// itself says. A record it has never seen counts as seen now, so that a
// fresh observer (a plugin just started) takes every host for alive for a
// lease lifetime before it may take one for gone. Safe for concurrent use.
type Witness struct {
	mu   sync.Mutex
	seen map[string]sighting
}

type sighting struct {
	value string
	at    time.Time
}

// NewWitness returns a witness that has seen nothing yet.
func NewWitness() *Witness { return &Witness{seen: map[string]sighting{}} }

// Saw notes key's current value (any string that changes when the record
// does) at now, and returns when this observer first saw that value.
func (o *Witness) Saw(key, value string, now time.Time) time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	if s, ok := o.seen[key]; ok && s.value == value {
		return s.at
	}
	o.seen[key] = sighting{value: value, at: now}
	return now
}

// Host notes a host's record and its renewal (zero: none read) and returns
// when this observer last saw either change.
func (o *Witness) Host(h Host, renewed time.Time, now time.Time) time.Time {
	a := o.Saw(HostPath(h.ID), hostValue(h), now)
	if renewed.IsZero() {
		return a
	}
	if b := o.Saw(RenewalPath(h.ID), renewed.UTC().Format(time.RFC3339Nano), now); b.After(a) {
		return b
	}
	return a
}

// Block notes a block's lease and returns when this observer last saw it
// renewed (or change hands).
func (o *Witness) Block(b Block, now time.Time) time.Time {
	return o.Saw(BlockPath(b.Pool, b.CIDR), b.Host+" "+b.Expires.UTC().Format(time.RFC3339Nano), now)
}

// Forget drops what the observer saw under prefix that keep does not name
// (records gone from the store), so that its memory follows the store.
func (o *Witness) Forget(prefix string, keep func(key string) bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k := range o.seen {
		if strings.HasPrefix(k, prefix) && !keep(k) {
			delete(o.seen, k)
		}
	}
}

// hostValue is what of a host record changes when its host writes it.
func hostValue(h Host) string {
	return h.Address + " " + h.Version + " " + h.Renewed.UTC().Format(time.RFC3339Nano) + " " + h.WireGuardKey + " " + h.LinkLocal6
}

// Observe fills Seen for every host of l.Hosts (every host record there
// is) from their records and renewals (the hosts' renewal records,
// ReadRenewals; nil: not read yet).
func (l *Liveness) Observe(o *Witness, renewals map[string]time.Time) {
	l.Seen = make(map[string]time.Time, len(l.Hosts))
	for id, h := range l.Hosts {
		l.Seen[id] = o.Host(h, renewals[id], l.Now)
	}
	o.Forget(HostsPrefix, func(k string) bool { _, ok := l.Hosts[strings.TrimPrefix(k, HostsPrefix)]; return ok })
	if renewals != nil {
		o.Forget(RenewalsPrefix, func(k string) bool { _, ok := renewals[strings.TrimPrefix(k, RenewalsPrefix)]; return ok })
	}
}

// ObserveBlocks fills BlockSeen for blocks.
func (l *Liveness) ObserveBlocks(o *Witness, blocks []Block) {
	if l.BlockSeen == nil {
		l.BlockSeen = make(map[string]time.Time, len(blocks))
	}
	for _, b := range blocks {
		l.BlockSeen[BlockPath(b.Pool, b.CIDR)] = o.Block(b, l.Now)
	}
}

// ReadRenewals lists every host's last liveness renewal under renewals/
// (what the host wrote: a value whose change a Witness times).
func ReadRenewals(ctx context.Context, s Store, skipped func(*DecodeError)) (map[string]time.Time, error) {
	out := map[string]time.Time{}
	_, err := ListJSON(ctx, s, RenewalsPrefix, func(key string, _ uint64, r Renewal) error {
		out[strings.TrimPrefix(key, RenewalsPrefix)] = r.Renewed
		return nil
	}, skipped)
	return out, err
}

// ReadLiveness reads hosts/ and renewals/ and times them with o.
func ReadLiveness(ctx context.Context, s Store, o *Witness, now time.Time, ttl time.Duration, skipped func(*DecodeError)) (Liveness, error) {
	l := Liveness{Hosts: map[string]Host{}, Now: now, TTL: ttl}
	if _, err := ListJSON(ctx, s, HostsPrefix, func(_ string, _ uint64, h Host) error {
		l.Hosts[h.ID] = h
		return nil
	}, skipped); err != nil {
		return l, err
	}
	renewals, err := ReadRenewals(ctx, s, skipped)
	if err != nil {
		return l, err
	}
	l.Observe(o, renewals)
	return l, nil
}
