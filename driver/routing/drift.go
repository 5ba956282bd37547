package routing

import (
	"errors"
	"fmt"
	"slices"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/internal/dockerid"
)

// Drift lists how the kernel differs from the networks' current plans,
// changing nothing: what the next repair would write ("missing ...") and
// remove ("extra ..."), per network ID. Networks with no plan yet are left
// out.
func (r *Router) Drift() (map[string][]string, error) {
	out := map[string][]string{}
	var errs []error
	r.eachPlan(func(w *netWatch, plan *Plan) {
		d := &dryRun{k: r.k}
		err := Apply(d, w.n, *plan)
		if err == nil && d.err != nil {
			err = d.err
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("network %s: %w", dockerid.Short(w.n.ID), err))
			return
		}
		slices.Sort(d.changes)
		out[w.n.ID] = d.changes
	})
	return out, errors.Join(errs...)
}

// dryRun is a Kernel that reads the real one and records, instead of
// making, the changes Apply asks for: a write of an entry the kernel
// already holds as it is is no change.
type dryRun struct {
	k       Kernel
	routes  map[string]map[kernel.Route]bool // under "": routes are not per link
	neighs  map[string]map[kernel.Neigh]bool
	fdbs    map[string]map[kernel.FDB]bool
	changes []string
	err     error
}

func (d *dryRun) note(format string, args ...any) error {
	d.changes = append(d.changes, fmt.Sprintf(format, args...))
	return nil
}

func (d *dryRun) LinkExists(name string) bool { return d.k.LinkExists(name) }

func (d *dryRun) ownedRoutes(string) ([]kernel.Route, error) { return d.k.OwnedRoutes() }

func (d *dryRun) OwnedRoutes() ([]kernel.Route, error) {
	return dumpOnce(d.ownedRoutes, "", &d.routes)
}

func (d *dryRun) ReplaceRoute(r kernel.Route) error {
	if held(d, r, "", &d.routes, d.ownedRoutes) {
		return nil
	}
	return d.note("missing route %s", r)
}

func (d *dryRun) DeleteRoute(r kernel.Route) error { return d.note("extra route %s", r) }

func (d *dryRun) Neighs(link string) ([]kernel.Neigh, error) {
	return dumpOnce(d.k.Neighs, link, &d.neighs)
}

func (d *dryRun) ReplaceNeigh(n kernel.Neigh) error {
	if held(d, n, n.Link, &d.neighs, d.k.Neighs) {
		return nil
	}
	return d.note("missing neighbour %s lladdr %s dev %s", n.IP, n.MAC, n.Link)
}

func (d *dryRun) DeleteNeigh(n kernel.Neigh) error {
	return d.note("extra neighbour %s lladdr %s dev %s", n.IP, n.MAC, n.Link)
}

func (d *dryRun) FDBs(link string) ([]kernel.FDB, error) {
	return dumpOnce(d.k.FDBs, link, &d.fdbs)
}

func (d *dryRun) ReplaceFDB(f kernel.FDB) error {
	if held(d, f, f.Link, &d.fdbs, d.k.FDBs) {
		return nil
	}
	return d.note("missing FDB entry %s dst %s dev %s", f.MAC, f.Dst, f.Link)
}

func (d *dryRun) DeleteFDB(f kernel.FDB) error {
	return d.note("extra FDB entry %s dst %s dev %s", f.MAC, f.Dst, f.Link)
}

// dumpOnce dumps a link's entries and keeps them as a set, the first time.
func dumpOnce[T comparable](dump func(string) ([]T, error), link string, sets *map[string]map[T]bool) ([]T, error) {
	xs, err := dump(link)
	if err == nil {
		if *sets == nil {
			*sets = map[string]map[T]bool{}
		}
		if (*sets)[link] == nil {
			(*sets)[link] = map[T]bool{}
			for _, x := range xs {
				(*sets)[link][x] = true
			}
		}
	}
	return xs, err
}

// held says whether the kernel holds x on link (dumped once); a failed
// dump is kept in d.err.
func held[T comparable](d *dryRun, x T, link string, sets *map[string]map[T]bool, dump func(string) ([]T, error)) bool {
	if (*sets)[link] == nil {
		if _, err := dumpOnce(dump, link, sets); err != nil {
			d.err = err
			return true
		}
	}
	return (*sets)[link][x]
}
