package routing

import (
	"fmt"
	"slices"

	"github.com/tartan-net/tartan/driver/kernel"
)

// Drift lists how the kernel differs from the networks' current plans,
// changing nothing: what the next repair would write ("missing ...") and
// remove ("extra ..."), per network ID. Networks with no plan yet are left
// out.
func (r *Router) Drift() (map[string][]string, error) {
	r.mu.Lock()
	ws := make([]*netWatch, 0, len(r.nets))
	for _, w := range r.nets {
		ws = append(ws, w)
	}
	r.mu.Unlock()
	out := map[string][]string{}
	for _, w := range ws {
		w.turn.Lock()
		r.mu.Lock()
		plan, live := w.plan, r.nets[w.n.ID] == w
		r.mu.Unlock()
		if plan != nil && live {
			d := &dryRun{k: r.k}
			err := Apply(d, w.n, *plan)
			if err == nil && d.err != nil {
				err = d.err
			}
			if err != nil {
				w.turn.Unlock()
				return nil, fmt.Errorf("network %s: %w", shortID(w.n.ID), err)
			}
			slices.Sort(d.changes)
			out[w.n.ID] = d.changes
		}
		w.turn.Unlock()
	}
	return out, nil
}

// dryRun is a Kernel that reads the real one and records, instead of
// making, the changes Apply asks for: a write of an entry the kernel
// already holds as it is is no change.
type dryRun struct {
	k       Kernel
	routes  map[kernel.Route]bool
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

func (d *dryRun) OwnedRoutes() ([]kernel.Route, error) {
	rs, err := d.k.OwnedRoutes()
	if err == nil && d.routes == nil {
		d.routes = map[kernel.Route]bool{}
		for _, r := range rs {
			d.routes[r] = true
		}
	}
	return rs, err
}

func (d *dryRun) ReplaceRoute(r kernel.Route) error {
	if d.routes == nil {
		if _, err := d.OwnedRoutes(); err != nil {
			d.err = err
			return nil
		}
	}
	if d.routes[r] {
		return nil
	}
	return d.note("missing route %s", r)
}

func (d *dryRun) DeleteRoute(r kernel.Route) error { return d.note("extra route %s", r) }

func (d *dryRun) Neighs(link string) ([]kernel.Neigh, error) {
	ns, err := d.k.Neighs(link)
	if err == nil {
		if d.neighs == nil {
			d.neighs = map[string]map[kernel.Neigh]bool{}
		}
		if d.neighs[link] == nil {
			d.neighs[link] = map[kernel.Neigh]bool{}
			for _, n := range ns {
				d.neighs[link][n] = true
			}
		}
	}
	return ns, err
}

func (d *dryRun) ReplaceNeigh(n kernel.Neigh) error {
	if d.neighs[n.Link] == nil {
		if _, err := d.Neighs(n.Link); err != nil {
			d.err = err
			return nil
		}
	}
	if d.neighs[n.Link][n] {
		return nil
	}
	return d.note("missing neighbour %s lladdr %s dev %s", n.IP, n.MAC, n.Link)
}

func (d *dryRun) DeleteNeigh(n kernel.Neigh) error {
	return d.note("extra neighbour %s lladdr %s dev %s", n.IP, n.MAC, n.Link)
}

func (d *dryRun) FDBs(link string) ([]kernel.FDB, error) {
	fs, err := d.k.FDBs(link)
	if err == nil {
		if d.fdbs == nil {
			d.fdbs = map[string]map[kernel.FDB]bool{}
		}
		if d.fdbs[link] == nil {
			d.fdbs[link] = map[kernel.FDB]bool{}
			for _, f := range fs {
				d.fdbs[link][f] = true
			}
		}
	}
	return fs, err
}

func (d *dryRun) ReplaceFDB(f kernel.FDB) error {
	if d.fdbs[f.Link] == nil {
		if _, err := d.FDBs(f.Link); err != nil {
			d.err = err
			return nil
		}
	}
	if d.fdbs[f.Link][f] {
		return nil
	}
	return d.note("missing FDB entry %s dst %s dev %s", f.MAC, f.Dst, f.Link)
}

func (d *dryRun) DeleteFDB(f kernel.FDB) error {
	return d.note("extra FDB entry %s dst %s dev %s", f.MAC, f.Dst, f.Link)
}
