package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
)

// Reconcile makes the kernel match the local state: every network's device
// and every endpoint whose veth still exists are ensured, the firewall is
// rewritten, and links and routes tartan owns that nothing needs are removed.
// It runs once after a (re)start and then periodically; it repairs objects
// deleted by hand and adopts what a previous plugin process left.
func (d *Driver) Reconcile(ctx context.Context) error {
	err := d.reconcileLocal(ctx)
	// Peer entries: every network's last plan applied in full, outside
	// d.mu (this repairs what was deleted by hand).
	return errors.Join(err, d.routes.Repair())
}

// reconcileLocal is Reconcile's part for this host's own objects.
func (d *Driver) reconcileLocal(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	wantLinks := map[string]bool{}
	wantRoutes := map[netip.Prefix]string{}
	for _, n := range d.st.networks {
		if n.Device != "" {
			wantLinks[n.Device] = true
		}
		if n.Shim != "" {
			wantLinks[n.Shim] = true
		}
		if err := d.ensureNetwork(n); err != nil {
			errs = append(errs, err)
		}
	}
	busy := map[string]bool{} // links of endpoints a call is changing now
	busyIDs := map[string]bool{}
	for id := range d.inflight {
		host, peer := kernel.EndpointNames(id)
		wantLinks[host], wantLinks[peer] = true, true
		busy[host], busyIDs[id] = true, true
	}
	vethGone, unjoined := map[string]bool{}, map[string]bool{}
	for _, e := range d.st.endpoints {
		wantLinks[e.HostIf], wantLinks[e.PeerIf] = true, true
		if busy[e.HostIf] {
			continue
		}
		n, ok := d.st.networks[e.Network]
		if !ok {
			continue
		}
		if n.bridged() {
			// The macvlan lives in the container; only the shim's route
			// to it is the host's to keep.
			if r, ok := shimRoute(n, e); ok {
				wantRoutes[r.Dst] = r.Link
				if err := kernel.ReplaceRoute(r); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		if !kernel.LinkExists(e.HostIf) {
			vethGone[e.ID] = true
			continue
		}
		if !kernel.PeerInContainer(e.HostIf) {
			unjoined[e.ID] = true
		}
		wantRoutes[netip.PrefixFrom(e.ip(), 32)] = e.HostIf
		if err := kernel.ConfigureHostSide(e.HostIf, n.gateway(), e.ip()); err != nil {
			errs = append(errs, err)
		}
	}
	now := time.Now()
	errs = append(errs, d.dropStaleLocked(ctx, busyIDs, vethGone, unjoined, now))
	present := map[string]bool{}
	for _, prefix := range []string{kernel.EndpointPrefix, kernel.PeerPrefix, kernel.ShimPrefix, kernel.VXLANPrefix} {
		names, err := kernel.Links(prefix)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, name := range names {
			present[name] = true
			if wantLinks[name] || !owned(name) || !d.provenDeadLocked(name, now) {
				continue
			}
			d.log.WithField("if", name).Info("removing a link tartan owns and no longer needs")
			if err := kernel.DeleteLink(name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for name := range d.orphans {
		if !present[name] || wantLinks[name] {
			delete(d.orphans, name)
		}
	}
	routes, err := kernel.OwnedRoutes()
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range routes {
		if link, ok := wantRoutes[r.Dst]; ok && link == r.Link && !r.Via.IsValid() {
			continue
		}
		if r.Via.IsValid() && d.inLocalPool(r.Dst) {
			continue // a peer route: routing owns it
		}
		if busy[r.Link] || (r.Link != "" && present[r.Link] && !wantLinks[r.Link]) {
			continue // a link kept until it is proven dead keeps its route
		}
		d.log.WithField("route", r.String()).Info("removing a route tartan owns and no longer needs")
		if err := kernel.DeleteRoute(r); err != nil {
			errs = append(errs, err)
		}
	}
	// Last: applyFirewall releases d.mu while iptables runs.
	if err := d.applyFirewall(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// dropStaleLocked removes local endpoint records that nothing uses any more
// (staleEndpoints says which): Docker never sent DeleteEndpoint for them.
// Called with d.mu held.
func (d *Driver) dropStaleLocked(ctx context.Context, busy, vethGone, unjoined map[string]bool, now time.Time) error {
	res := staleEndpoints(staleInput{Endpoints: d.st.endpoints, Networks: d.st.networks, Busy: busy, VethGone: vethGone,
		Unjoined: unjoined, JoinGrace: max(d.cfg.OrphanGrace, JoinGrace), Missing: d.missing, Now: now, Grace: d.cfg.OrphanGrace})
	d.missing = res.Missing
	var errs []error
	for _, id := range res.Drop {
		e := d.st.endpoints[id]
		if err := d.local.Delete(ctx, localEndpoints+id, 0); err != nil {
			errs = append(errs, fmt.Errorf("forget stale endpoint %s: %w", shortID(id), err))
			continue
		}
		delete(d.st.endpoints, id)
		d.log.WithFields(logrus.Fields{"endpoint": shortID(id), "ip": e.IP, "network": shortID(e.Network)}).Info("forgot an endpoint Docker never deleted: its veth or its network is gone, or no container took its veth")
	}
	return errors.Join(errs...)
}

// JoinGrace is the least time an endpoint's veth may stay out of every
// container before its record is taken for stale (staleInput.Unjoined).
const JoinGrace = time.Minute

// provenDeadLocked says whether a link tartan owns but has no record of may
// go. The plugin deletes only what it can prove is dead: the host end of a
// veth whose other end a container holds is alive (the pair goes with the
// container's namespace), whatever the local records say; anything else is
// removed once it has stayed unknown for OrphanGrace (an endpoint
// between Docker's CreateEndpoint and Join has both ends here, briefly).
// Called with d.mu held.
func (d *Driver) provenDeadLocked(name string, now time.Time) bool {
	if strings.HasPrefix(name, kernel.EndpointPrefix) && kernel.PeerInContainer(name) {
		if _, seen := d.orphans[name]; !seen {
			d.orphans[name] = now
			d.log.WithField("if", name).Warn("keeping an endpoint link tartan has no record of: a container still holds its other end")
		}
		return false
	}
	first, seen := d.orphans[name]
	if !seen {
		d.orphans[name] = now
		d.log.WithField("if", name).Info("a link tartan owns has no record: removing it if it is still unknown in two resync periods")
		return false
	}
	return now.Sub(first) >= d.cfg.OrphanGrace
}

// owned tells tartan's link names from others that share a prefix: endpoint
// links are tn/tp plus 11 hex digits (host-access shims tm), VXLAN devices
// tartan.<number>.
func owned(name string) bool {
	switch {
	case strings.HasPrefix(name, kernel.VXLANPrefix):
		rest := strings.TrimPrefix(name, kernel.VXLANPrefix)
		return rest != "" && strings.Trim(rest, "0123456789") == ""
	case strings.HasPrefix(name, kernel.EndpointPrefix), strings.HasPrefix(name, kernel.PeerPrefix), strings.HasPrefix(name, kernel.ShimPrefix):
		rest := name[2:]
		return len(rest) == 11 && strings.Trim(rest, "0123456789abcdef") == ""
	}
	return false
}

// inLocalPool says whether dst is inside the pool of a network of this host.
// Called with d.mu held.
func (d *Driver) inLocalPool(dst netip.Prefix) bool {
	for _, n := range d.st.networks {
		if routing.Inside(n.pool(), dst) {
			return true
		}
	}
	return false
}
