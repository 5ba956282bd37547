package routing

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/tartan-net/tartan/driver/kernel"
)

// Kernel is what routing asks of the kernel: Netlink in the plugin, a stub
// that counts operations in make scale.
type Kernel interface {
	LinkExists(name string) bool
	ReplaceRoute(kernel.Route) error
	DeleteRoute(kernel.Route) error
	// OwnedRoutes dumps every route tartan owns (its route protocol).
	OwnedRoutes() ([]kernel.Route, error)
	ReplaceNeigh(kernel.Neigh) error
	DeleteNeigh(kernel.Neigh) error
	Neighs(link string) ([]kernel.Neigh, error)
	ReplaceFDB(kernel.FDB) error
	DeleteFDB(kernel.FDB) error
	FDBs(link string) ([]kernel.FDB, error)
}

// Netlink is the host's kernel, through driver/kernel.
type Netlink struct{}

func (Netlink) LinkExists(name string) bool                { return kernel.LinkExists(name) }
func (Netlink) ReplaceRoute(r kernel.Route) error          { return kernel.ReplaceRoute(r) }
func (Netlink) DeleteRoute(r kernel.Route) error           { return kernel.DeleteRoute(r) }
func (Netlink) OwnedRoutes() ([]kernel.Route, error)       { return kernel.OwnedRoutes() }
func (Netlink) ReplaceNeigh(n kernel.Neigh) error          { return kernel.ReplaceNeigh(n) }
func (Netlink) DeleteNeigh(n kernel.Neigh) error           { return kernel.DeleteNeigh(n) }
func (Netlink) Neighs(link string) ([]kernel.Neigh, error) { return kernel.Neighs(link) }
func (Netlink) ReplaceFDB(f kernel.FDB) error              { return kernel.ReplaceFDB(f) }
func (Netlink) DeleteFDB(f kernel.FDB) error               { return kernel.DeleteFDB(f) }
func (Netlink) FDBs(link string) ([]kernel.FDB, error)     { return kernel.FDBs(link) }

// inside says whether prefix p lies entirely within pool.
func inside(pool, p netip.Prefix) bool {
	return p.IsValid() && p.Bits() >= pool.Bits() && pool.Contains(p.Addr())
}

// checkRoutes keeps the routes of a plan that lie inside the network's pool.
// Compute never plans another; refusing one here as well keeps a store
// record from ever replacing a host route (RouteReplace would overwrite a
// default route in the main table).
func checkRoutes(n Network, routes []kernel.Route) ([]kernel.Route, []error) {
	var ok []kernel.Route
	var errs []error
	for _, r := range routes {
		if !inside(n.Pool, r.Dst) {
			errs = append(errs, fmt.Errorf("refusing peer route %s: outside the network's pool %s", r, n.Pool))
			continue
		}
		ok = append(ok, r)
	}
	return ok, errs
}

// Apply makes the kernel hold exactly the plan's peer entries for the
// network: every entry is written, and the kernel's entries on its device or
// in its pool that the plan lacks are removed. It dumps the kernel's tables:
// the periodic repair and the first apply use it; changes go through Update.
func Apply(k Kernel, n Network, plan Plan) error {
	routes, errs := checkRoutes(n, plan.Routes)
	if n.Device != "" && k.LinkExists(n.Device) {
		wantN := map[string]bool{}
		for _, x := range plan.Neighs {
			wantN[neighKey(x)] = true
			if err := k.ReplaceNeigh(x); err != nil {
				errs = append(errs, err)
			}
		}
		wantF := map[string]bool{}
		for _, f := range plan.FDBs {
			wantF[fdbKey(f)] = true
			if err := k.ReplaceFDB(f); err != nil {
				errs = append(errs, err)
			}
		}
		if cur, err := k.Neighs(n.Device); err == nil {
			for _, x := range cur {
				if !wantN[neighKey(x)] {
					errs = append(errs, k.DeleteNeigh(x))
				}
			}
		}
		if cur, err := k.FDBs(n.Device); err == nil {
			for _, f := range cur {
				if !wantF[fdbKey(f)] {
					errs = append(errs, k.DeleteFDB(f))
				}
			}
		}
	}
	want := map[kernel.Route]bool{}
	for _, r := range routes {
		want[r] = true
		if err := k.ReplaceRoute(r); err != nil {
			errs = append(errs, err)
		}
	}
	cur, err := k.OwnedRoutes()
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range cur {
		// Peer routes of this network: anything tartan routed via a peer
		// that touches the pool (also a wider prefix an older version let
		// in from a bad record) or that sits on the network's device.
		mine := n.Pool.Overlaps(r.Dst) || (n.Device != "" && r.Link == n.Device)
		if r.Via.IsValid() && mine && !want[r] {
			errs = append(errs, k.DeleteRoute(r))
		}
	}
	return errors.Join(errs...)
}

// Update changes the kernel from the plan that was applied last to the new
// one: only entries that appeared or went are written, with no dump. An
// entry that changed (a route to the same destination via another host) is
// replaced in place, never deleted first.
func Update(k Kernel, n Network, was, now Plan) error {
	routes, errs := checkRoutes(n, now.Routes)
	if n.Device != "" {
		oldN, newN := map[string]bool{}, map[string]bool{}
		byIP := map[netip.Addr]bool{}
		for _, x := range was.Neighs {
			oldN[neighKey(x)] = true
		}
		for _, x := range now.Neighs {
			newN[neighKey(x)], byIP[x.IP] = true, true
			if !oldN[neighKey(x)] {
				errs = append(errs, k.ReplaceNeigh(x))
			}
		}
		for _, x := range was.Neighs {
			if !newN[neighKey(x)] && !byIP[x.IP] {
				errs = append(errs, k.DeleteNeigh(x))
			}
		}
		oldF, newF := map[string]bool{}, map[string]bool{}
		for _, f := range was.FDBs {
			oldF[fdbKey(f)] = true
		}
		for _, f := range now.FDBs {
			newF[fdbKey(f)] = true
			if !oldF[fdbKey(f)] {
				errs = append(errs, k.ReplaceFDB(f))
			}
		}
		for _, f := range was.FDBs {
			if !newF[fdbKey(f)] {
				errs = append(errs, k.DeleteFDB(f))
			}
		}
	}
	oldR := map[kernel.Route]bool{}
	for _, r := range was.Routes {
		oldR[r] = true
	}
	dsts := map[netip.Prefix]bool{}
	for _, r := range routes {
		dsts[r.Dst] = true
		if !oldR[r] {
			errs = append(errs, k.ReplaceRoute(r))
		}
	}
	for _, r := range was.Routes {
		if !dsts[r.Dst] {
			errs = append(errs, k.DeleteRoute(r))
		}
	}
	return errors.Join(errs...)
}

func neighKey(x kernel.Neigh) string { return x.Link + "/" + x.IP.String() + "/" + x.MAC }
func fdbKey(f kernel.FDB) string     { return f.Link + "/" + f.MAC + "/" + f.Dst.String() }

// VXLANPeers is the underlay addresses of a plan's VXLAN peers.
func (p Plan) VXLANPeers() []netip.Addr {
	out := make([]netip.Addr, 0, len(p.FDBs))
	for _, f := range p.FDBs {
		out = append(out, f.Dst)
	}
	return out
}
