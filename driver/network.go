package driver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/routed"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// CreateNetwork validates and creates a network on this host.
func (d *Driver) CreateNetwork(ctx context.Context, r NetworkRequest) error {
	if r.ID == "" {
		return errdefs.Invalid("CreateNetwork without a NetworkID")
	}
	opts, err := d.ParseOptions(r.Options)
	if err != nil {
		return err
	}
	if opts.Cluster && d.cfg.NoClusterNetworks != nil {
		return errdefs.Invalid("-o %s=true: %w", OptCluster, d.cfg.NoClusterNetworks)
	}
	if err := d.checkStore(ctx, opts); err != nil {
		return err
	}
	if opts.IPv6 != r.Pool6.IsValid() {
		return errdefs.Invalid("--ipv6 needs an IPv6 --subnet from tartan's IPAM beside the IPv4 one, such as --subnet fd00:10::/64 (and an IPv6 subnet needs --ipv6)")
	}
	pool := r.Pool
	d.netMu.Lock()
	defer d.netMu.Unlock()
	d.mu.Lock()
	if n, ok := d.st.networks[r.ID]; ok && n.Pool == pool.String() && n.Pool6Prefix() == r.Pool6 {
		d.mu.Unlock()
		return d.backendOf(n).Ensure(n) // a replay
	}
	pools := []netip.Prefix{pool}
	if r.Pool6.IsValid() {
		pools = append(pools, r.Pool6)
	}
	for _, p := range pools {
		if other := d.poolUserLocked(p); other != "" {
			d.mu.Unlock()
			return errdefs.InUse("subnet %s is already used by tartan network %s on this host: use another --subnet", p, shortID(other))
		}
	}
	for _, p := range pools {
		d.creating[p.String()] = r.ID
	}
	others := d.networksLocked(r.ID)
	d.mu.Unlock()
	n, err := d.createNetwork(ctx, r, opts, backend.CreateRequest{Options: opts, Gateway: r.Gateway, Gateway6: r.Gateway6, Others: others})
	d.mu.Lock()
	for _, p := range pools {
		delete(d.creating, p.String())
	}
	if err == nil {
		d.st.networks[n.ID] = n
		d.startRoutingLocked(n)
	}
	d.mu.Unlock()
	if err != nil {
		return err
	}
	if err := d.writeFirewall(); err != nil {
		d.mu.Lock()
		delete(d.st.networks, n.ID)
		d.mu.Unlock()
		d.routes.Remove(n.ID)
		_ = d.local.Delete(context.WithoutCancel(ctx), localNetworks+n.ID, 0)
		d.undoNetwork(ctx, n, others, func(context.Context) {})
		return err
	}
	d.log.WithFields(logrus.Fields{"network": shortID(n.ID), "pool": n.Pool, "pool6": n.Pool6, "backend": n.Backend, "vni": n.VNI, "mtu": n.MTU}).Info("network created")
	return nil
}

// createNetwork writes the cluster record, has the backend make the
// network and saves the local record; a failure takes back what it made.
// Called with d.netMu held.
func (d *Driver) createNetwork(ctx context.Context, r NetworkRequest, opts backend.Options, req backend.CreateRequest) (localNetwork, error) {
	if off := d.bgpOff(); opts.Announce && off != "" {
		return localNetwork{}, errdefs.Invalid("-o %s=true: %s", routed.OptAnnounce, strings.Replace(off, ", or use host-gw or vxlan", ", or leave the option out", 1))
	}
	rec, undoRecord, err := d.clusterNetwork(ctx, r.Pool, r.Pool6, opts, false)
	if err != nil {
		return localNetwork{}, err
	}
	n := localNetwork{ID: r.ID, Pool: r.Pool.String(), Backend: rec.Backend, VNI: rec.VNI, Space: r.Space, Internal: opts.Internal, Direct: opts.DirectRouting,
		NAT66: opts.NAT66, Policy: opts.Policy, Announce: opts.Announce}
	if r.Pool6.IsValid() {
		n.Pool6 = r.Pool6.String()
	}
	b := d.backendOf(n)
	if err := b.Create(ctx, &n, req); err != nil {
		d.undoNetwork(ctx, n, req.Others, undoRecord)
		return n, err
	}
	if err := b.Ensure(n); err != nil {
		d.undoNetwork(ctx, n, req.Others, undoRecord)
		return n, err
	}
	if err := putLocal(ctx, d.local, localNetworks+n.ID, n); err != nil {
		d.undoNetwork(ctx, n, req.Others, undoRecord)
		return n, fmt.Errorf("save network %s: %w", shortID(n.ID), err)
	}
	return n, nil
}

// undoNetwork takes back a network this host failed to create.
func (d *Driver) undoNetwork(ctx context.Context, n localNetwork, others []localNetwork, undoRecord func(context.Context)) {
	ctx = context.WithoutCancel(ctx)
	if err := d.backendOf(n).Remove(ctx, n, others); err != nil {
		d.log.WithField("network", shortID(n.ID)).Warnf("take back a network that failed: %v", err)
	}
	undoRecord(ctx)
}

// DeleteNetwork removes the network from this host. The cluster record stays
// until the pool's last holder releases it (ipam.ReleasePool).
func (d *Driver) DeleteNetwork(ctx context.Context, id string) error {
	d.netMu.Lock()
	defer d.netMu.Unlock()
	d.mu.Lock()
	n, ok := d.st.networks[id]
	var left []localEndpoint
	for _, e := range d.st.endpoints {
		if e.Network == n.ID {
			left = append(left, e)
		}
	}
	others := d.networksLocked(n.ID)
	d.mu.Unlock()
	if !ok {
		return nil
	}
	for _, e := range left {
		if err := d.removeEndpoint(ctx, e.ID); err != nil {
			return err
		}
	}
	if err := d.removeNetwork(ctx, n, others); err != nil {
		d.mu.Lock()
		if _, ok := d.st.networks[n.ID]; ok {
			d.startRoutingLocked(n) // still here: it keeps its peers
		}
		d.mu.Unlock()
		return err
	}
	d.log.WithFields(logrus.Fields{"network": shortID(n.ID), "pool": n.Pool}).Info("network deleted")
	d.mu.Lock()
	cur := d.st.networks[n.ID]
	pending, pending6 := n.ReleasePending || cur.ReleasePending, n.ReleasePending6 || cur.ReleasePending6
	delete(d.st.networks, n.ID)
	d.mu.Unlock()
	if err := d.writeFirewall(); err != nil {
		d.log.WithField("network", shortID(n.ID)).Warnf("firewall without the deleted network: %v (the next reconcile writes it again)", err)
	}
	if err := d.local.Delete(ctx, localNetworks+n.ID, 0); err != nil {
		return fmt.Errorf("forget network %s: %w", shortID(n.ID), err)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	for _, p := range []struct {
		due bool
		id  ipam.PoolID
	}{{pending, poolID(n)}, {pending6, poolID6(n)}} {
		if !p.due {
			continue
		}
		if err := d.addrs.ReleasePool(rctx, p.id); err != nil {
			d.log.WithField("pool", p.id.CIDR).Warnf("release the pool of the deleted network: %v", err)
		}
	}
	return nil
}

// removeNetwork stops the network's routing and takes its peers' entries
// and its backend's objects away. Called with d.netMu held.
func (d *Driver) removeNetwork(ctx context.Context, n localNetwork, others []localNetwork) error {
	b := d.backendOf(n)
	if p, ok := b.Peers(n); ok {
		d.routes.Remove(n.ID)
		if err := routing.Apply(routing.Netlink{}, p, routing.Plan{}); err != nil {
			return err
		}
	}
	return b.Remove(ctx, n, others)
}

// clusterNetwork creates the cluster record of the network, or checks that
// the one another host made agrees with these options. The record and its
// VNI live as long as the pool (the last holder's ipam.ReleasePool removes
// both); undo takes back a record this call made when the create fails on
// this host, unless another host holds the pool and may use the record.
// swarm says the caller is a swarm manager's AllocateNetwork.
// A dual-stack network's IPv6 pool gets a record of its own beside
// (kv.PoolNetwork.IPv4Pool names the network's), so that its addresses are
// handed out as the backend needs them.
func (d *Driver) clusterNetwork(ctx context.Context, pool, pool6 netip.Prefix, o backend.Options, swarm bool) (kv.PoolNetwork, func(context.Context), error) {
	undo := func(context.Context) {}
	key := kv.NetworkPath(pool.String())
	var rec kv.PoolNetwork
	p6 := ""
	if pool6.IsValid() {
		p6 = pool6.String()
	}
	err := kv.Retry(ctx, func() error {
		_, err := kv.GetJSON(ctx, d.cluster, key, &rec)
		if err == nil {
			if swarm {
				rec.Swarm = true // Docker tells the manager nothing of --internal
			}
			if err := agrees(pool, rec, o); err != nil {
				return err
			}
			return agrees6(pool, rec, p6)
		}
		if !errors.Is(err, kv.ErrNotFound) {
			return fmt.Errorf("read network %s: %w", pool, err)
		}
		rec = kv.PoolNetwork{Pool: pool.String(), Pool6: p6, Backend: o.Backend, Internal: o.Internal, MTU: o.MTU, DirectRouting: o.DirectRouting,
			Policy: o.Policy, Swarm: swarm, Options: o.Raw, Created: time.Now().UTC()}
		vniCreated := false
		if d.backends[o.Backend].Describe().ClaimsVNI {
			if rec.VNI, vniCreated, err = kv.ClaimVNI(ctx, d.cluster, o.VNI, pool.String()); err != nil {
				return err
			}
		}
		version, err := kv.PutJSON(ctx, d.cluster, key, rec, 0)
		if err == nil {
			created := rec
			undo = func(ctx context.Context) { d.dropRecord(ctx, created, version, vniCreated) }
			return nil
		}
		// Another host recorded the network first (or the write failed).
		// A VNI claim this call made is given back unless the winner's
		// record uses it: the claim names the pool, so the winner may have
		// found it and kept it.
		if vniCreated {
			var winner kv.PoolNetwork
			if _, gerr := kv.GetJSON(ctx, d.cluster, key, &winner); gerr != nil || winner.VNI != rec.VNI {
				_ = kv.DeleteVNIOf(context.WithoutCancel(ctx), d.cluster, rec.VNI, rec.Pool)
			}
		}
		return kv.RetryOnConflict(fmt.Errorf("record network %s: %w", pool, err))
	})
	if err != nil || p6 == "" {
		return rec, undo, err
	}
	undo6, err := d.pool6Record(ctx, rec)
	if err != nil {
		undo(context.WithoutCancel(ctx))
		return rec, func(context.Context) {}, err
	}
	return rec, func(ctx context.Context) { undo6(ctx); undo(ctx) }, nil
}

// pool6Record writes the record of a dual-stack network's IPv6 pool, or
// checks that the one there is this network's. undo removes a record this
// call wrote.
func (d *Driver) pool6Record(ctx context.Context, rec kv.PoolNetwork) (undo func(context.Context), err error) {
	undo = func(context.Context) {}
	key := kv.NetworkPath(rec.Pool6)
	err = kv.Retry(ctx, func() error {
		var cur kv.PoolNetwork
		if _, err := kv.GetJSON(ctx, d.cluster, key, &cur); err == nil {
			if cur.IPv4Pool != rec.Pool {
				return errdefs.InUse("IPv6 subnet %s belongs to another network in the cluster (%s): use another IPv6 --subnet", rec.Pool6, cmp.Or(cur.IPv4Pool, "an IPv4 subnet's own record"))
			}
			return nil
		} else if !errors.Is(err, kv.ErrNotFound) {
			return fmt.Errorf("read network %s: %w", rec.Pool6, err)
		}
		six := kv.PoolNetwork{Pool: rec.Pool6, IPv4Pool: rec.Pool, Backend: rec.Backend, Internal: rec.Internal, MTU: rec.MTU,
			DirectRouting: rec.DirectRouting, Options: rec.Options, Created: rec.Created}
		version, err := kv.PutJSON(ctx, d.cluster, key, six, 0)
		if err == nil {
			undo = func(ctx context.Context) { _ = d.cluster.Delete(ctx, key, version) }
			return nil
		}
		return kv.RetryOnConflict(fmt.Errorf("record network %s: %w", rec.Pool6, err))
	})
	return undo, err
}

// agrees6 checks that this host gives a network the IPv6 pool the cluster
// recorded for it (none, or the same).
func agrees6(pool netip.Prefix, cur kv.PoolNetwork, pool6 string) error {
	switch {
	case cur.Pool6 == pool6:
		return nil
	case cur.Pool6 == "":
		return errdefs.Invalid("subnet %s has no IPv6 subnet in the cluster: remove --ipv6 and the IPv6 --subnet, or use another --subnet", pool)
	case pool6 == "":
		return errdefs.Invalid("subnet %s is dual-stack in the cluster, with IPv6 subnet %s: add --ipv6 --subnet %s on every host", pool, cur.Pool6, cur.Pool6)
	}
	return errdefs.Invalid("subnet %s has IPv6 subnet %s in the cluster: use --subnet %s on every host", pool, cur.Pool6, cur.Pool6)
}

// dropRecord removes a network record this host wrote (at version) and the
// VNI claim it made, when no other host holds the pool: a host that holds it
// may have found the record and created the network with it.
func (d *Driver) dropRecord(ctx context.Context, rec kv.PoolNetwork, version uint64, vniCreated bool) {
	var p kv.Pool
	if _, err := kv.GetJSON(ctx, d.cluster, kv.PoolPath(rec.Pool), &p); err == nil {
		holders, err := kv.PoolHolders(ctx, d.cluster, rec.Pool, p.Holders)
		if err != nil {
			return
		}
		for h := range holders {
			if !strings.HasPrefix(h, d.cfg.Host+"/") {
				return
			}
		}
	}
	if err := d.cluster.Delete(ctx, kv.NetworkPath(rec.Pool), version); err != nil {
		return
	}
	if vniCreated {
		_ = kv.DeleteVNIOf(ctx, d.cluster, rec.VNI, rec.Pool)
	}
}

// agrees checks this host's options for a network against the cluster's
// record: one subnet is one network, so a host must not make it internal,
// give it another MTU or route it differently.
func agrees(pool netip.Prefix, cur kv.PoolNetwork, o backend.Options) error {
	switch {
	case cur.Backend != o.Backend:
		return errdefs.Invalid("subnet %s is a %s network in the cluster: use -o %s=%s on every host", pool, cur.Backend, OptBackend, cur.Backend)
	case o.VNI != 0 && cur.VNI != o.VNI:
		return errdefs.Invalid("subnet %s has VNI %d in the cluster: use -o %s=%d or leave it out", pool, cur.VNI, vxlan.OptVNI, cur.VNI)
	case cur.Internal != o.Internal && !cur.Swarm:
		if cur.Internal {
			return errdefs.Invalid("subnet %s is an --internal network in the cluster: add --internal on every host", pool)
		}
		return errdefs.Invalid("subnet %s is not --internal in the cluster: remove --internal, or use another --subnet", pool)
	case cur.MTU != o.MTU:
		if cur.MTU == 0 {
			return errdefs.Invalid("subnet %s takes its MTU from the underlay in the cluster: remove -o %s", pool, OptMTU)
		}
		return errdefs.Invalid("subnet %s has -o %s=%d in the cluster: use the same value on every host", pool, OptMTU, cur.MTU)
	case cur.DirectRouting != o.DirectRouting:
		return errdefs.Invalid("subnet %s has -o %s=%t in the cluster: use the same value on every host", pool, vxlan.OptDirectRouting, cur.DirectRouting)
	case cur.Policy != o.Policy:
		return errdefs.Invalid("subnet %s has -o %s=%s in the cluster: use the same value on every host", pool, OptPolicy, cmp.Or(cur.Policy, "allow"))
	}
	return nil
}
