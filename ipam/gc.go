package ipam

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/kv"
)

// GoneAfter is how long a host's registration must have lapsed (in lease
// lifetimes) before its addresses are collected: its blocks are claimable
// after one lifetime, its addresses only after two, so that a host cut off
// for a while keeps them.
const GoneAfter = 2

// OrphanAfter is how old a record of this host's own must be before the
// sweep may take it for an orphan. Docker asks for an address and creates
// the endpoint right after, so a record that no endpoint has after this long
// was left by a call that failed half-way: the plugin killed between the
// two, a reply lost and the request sent again (a second address), a
// release Docker gave up on while the plugin was down.
const OrphanAfter = time.Minute

// Holding lists what this host's endpoints hold now: for each pool of a
// local-scope network of this host, the addresses of its endpoints. Pools
// it does not list are not swept (global-scope pools are allocated by swarm
// managers for tasks on any node; a pool with no tartan network here is
// another driver's).
type Holding func() map[string]map[string]bool

// Collected says what CollectGone removed.
type Collected struct {
	// Addresses, Blocks and Hosts are those of gone hosts.
	Addresses, Blocks, Hosts int
	// Orphans are this host's own address records that no endpoint has.
	Orphans int
}

// CollectGone removes, cluster-wide, the endpoint addresses and blocks of
// hosts that are gone: their registration is missing or has not been
// renewed for GoneAfter lease lifetimes (audit M3). Every delete is
// compare-and-set on the version read, so several hosts may run it at once
// and a record rewritten meanwhile (a host that came back) stays. The
// records of a gone host go last, once nothing of it is left.
//
// With local, it also sweeps this host's own endpoint address records
// older than OrphanAfter that no endpoint of the host has (local is asked
// after each pool's listing, so an endpoint created meanwhile is seen).
func (m *IPAM) CollectGone(ctx context.Context, local Holding) (Collected, error) {
	var got Collected
	now := m.cfg.Now()
	renewed := map[string]time.Time{}
	hostVersion := map[string]uint64{}
	if _, err := kv.ListJSON(ctx, m.store, kv.HostsPrefix, func(_ string, ver uint64, h kv.Host) error {
		renewed[h.ID], hostVersion[h.ID] = h.Renewed, ver
		return nil
	}, m.skipped); err != nil {
		return got, err
	}
	gone := func(host string) bool {
		r, ok := renewed[host]
		return host != m.cfg.Host && (!ok || now.Sub(r) > GoneAfter*m.cfg.LeaseTTL)
	}
	pools, err := m.pools(ctx)
	if err != nil {
		return got, err
	}
	holding := map[string]bool{} // gone hosts that still hold something
	var errs []error
	type candidate struct {
		key, ip string
		ver     uint64
	}
	for cidr := range pools {
		var own []candidate
		if _, err := kv.ListJSON(ctx, m.store, kv.AddressPrefix(cidr), func(key string, ver uint64, a kv.Address) error {
			if a.Kind != kv.KindEndpoint {
				return nil
			}
			if a.Host == m.cfg.Host && local != nil && now.Sub(a.Created) > OrphanAfter {
				own = append(own, candidate{key, a.IP, ver})
				return nil
			}
			if !gone(a.Host) {
				return nil
			}
			if err := m.store.Delete(ctx, key, ver); err != nil {
				holding[a.Host] = true
				if !errors.Is(err, kv.ErrConflict) {
					errs = append(errs, err)
				}
				return nil
			}
			got.Addresses++
			m.log.WithFields(logrus.Fields{"ip": a.IP, "host": a.Host}).Info("collected the address of a gone host")
			return nil
		}, m.skipped); err != nil {
			errs = append(errs, err)
			continue
		}
		if len(own) > 0 {
			held := local()[cidr]
			for _, c := range own {
				if held == nil || held[c.ip] {
					continue
				}
				if err := m.store.Delete(ctx, c.key, c.ver); err != nil {
					if !errors.Is(err, kv.ErrConflict) {
						errs = append(errs, err)
					}
					continue
				}
				got.Orphans++
				m.log.WithFields(logrus.Fields{"pool": cidr, "ip": c.ip}).Warn("released an address of this host that no endpoint has (a request or a release failed half-way)")
			}
		}
		if _, err := kv.ListJSON(ctx, m.store, kv.BlockPrefix(cidr), func(key string, ver uint64, b kv.Block) error {
			if !gone(b.Host) || b.Expires.After(now) {
				return nil
			}
			if err := m.store.Delete(ctx, key, ver); err != nil {
				holding[b.Host] = true
				if !errors.Is(err, kv.ErrConflict) {
					errs = append(errs, err)
				}
				return nil
			}
			got.Blocks++
			return nil
		}, m.skipped); err != nil {
			errs = append(errs, err)
		}
	}
	for host, ver := range hostVersion {
		if gone(host) && !holding[host] && len(errs) == 0 {
			if err := m.store.Delete(ctx, kv.HostPath(host), ver); err == nil {
				got.Hosts++
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return got, fmt.Errorf("collect gone hosts: %w", err)
	}
	return got, nil
}

// Reassert makes sure the record of an address a live endpoint of this host
// has exists: a host cut off from the store for longer than GoneAfter lease
// lifetimes finds its addresses collected, and takes them back unless
// another host was given one meanwhile (then it says so: that address is
// now on two hosts, and the container here must be restarted).
func (m *IPAM) Reassert(ctx context.Context, id PoolID, ip, mac string) error {
	rec := kv.Address{IP: ip, Pool: id.CIDR.String(), Host: m.cfg.Host, Kind: kv.KindEndpoint, MAC: mac, Created: m.cfg.Now().UTC()}
	var cur kv.Address
	_, err := kv.GetJSON(ctx, m.store, kv.AddressPath(rec.Pool, ip), &cur)
	switch {
	case err == nil && cur.Host != m.cfg.Host && id.Space != GlobalSpace:
		return fmt.Errorf("address %s of a container of this host is held by host %s (this host was cut off from the store for more than %d lease lifetimes): restart the container to give it a new address", ip, cur.Host, GoneAfter)
	case err == nil || !errors.Is(err, kv.ErrNotFound):
		return err
	}
	if _, err := kv.PutJSON(ctx, m.store, kv.AddressPath(rec.Pool, ip), rec, 0); err != nil && !errors.Is(err, kv.ErrConflict) {
		return err
	}
	m.log.WithFields(logrus.Fields{"pool": rec.Pool, "ip": ip}).Warn("took back the address of a live endpoint whose record was gone")
	return nil
}
