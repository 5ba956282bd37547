// Package clusternet makes networks created once appear on every host:
// a network made with -o tartan.cluster=true is published in the cluster
// store by the host that made it, and every other host's replicator creates
// it through its own Docker API, from background work, never from a request
// handler. When the host that made it removes it, the record goes and every
// replica is removed as soon as its host has no endpoints left on it.
package clusternet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/kv"
)

// LabelSource marks a replica with the Docker network ID of its origin.
const LabelSource = "tartan.cluster.source"

// DockerNetwork is a tartan network as this host's Docker reports it.
type DockerNetwork struct {
	ID      string
	Cluster bool   // made with -o tartan.cluster=true
	Source  string // LabelSource: set on replicas
	Spec    kv.ReplicatedNetwork
}

// Docker is what the replicator needs from the local Docker API.
type Docker interface {
	// Networks lists this host's networks whose driver is one of drivers.
	Networks(ctx context.Context, drivers []string) ([]DockerNetwork, error)
	// Drivers names the enabled tartan plugins here, as -d takes them.
	Drivers(ctx context.Context) ([]string, error)
	Create(ctx context.Context, spec kv.ReplicatedNetwork, driver, ipamDriver string) error
	Remove(ctx context.Context, id string) error
	// Changes calls poke whenever a network changes here, until ctx ends
	// or the event stream fails.
	Changes(ctx context.Context, poke func()) error
}

// Replicator keeps this host's Docker in line with the cluster's records.
type Replicator struct {
	store  kv.Store
	docker Docker
	host   string
	resync time.Duration
	log    logrus.FieldLogger
	warned map[string]string // conflicts already logged, by name
}

// New returns a replicator for host.
func New(store kv.Store, docker Docker, host string, resync time.Duration, log logrus.FieldLogger) *Replicator {
	return &Replicator{store: store, docker: docker, host: host, resync: resync, log: log, warned: map[string]string{}}
}

// Run syncs on every change of the records or of Docker's networks, and
// every resync period, until ctx ends.
func (r *Replicator) Run(ctx context.Context) {
	trigger := make(chan struct{}, 1)
	poke := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	go r.watchStore(ctx, poke)
	go r.watchDocker(ctx, poke)
	tick := time.NewTicker(r.resync)
	defer tick.Stop()
	poke()
	for {
		select {
		case <-ctx.Done():
			return
		case <-trigger:
		case <-tick.C:
		}
		if err := r.Sync(ctx); err != nil && ctx.Err() == nil {
			r.log.Warnf("cluster networks: %v (retrying)", err)
		}
	}
}

func (r *Replicator) watchStore(ctx context.Context, poke func()) {
	kv.Follow(ctx, r.store, kv.ClusterNetsPrefix, kv.FollowOptions{}, func(ps []kv.Pair) {
		if len(ps) == 0 {
			// Most clusters have no cluster-wide network: without its
			// marker this prefix is empty and the watch wakes on every
			// write in the store.
			if err := kv.KeepFolder(ctx, r.store, kv.ClusterNetsPrefix); err != nil {
				r.log.Debugf("mark %s: %v", kv.ClusterNetsPrefix, err)
			}
		}
		poke()
	})
}

func (r *Replicator) watchDocker(ctx context.Context, poke func()) {
	for ctx.Err() == nil {
		err := r.docker.Changes(ctx, poke)
		if ctx.Err() != nil {
			return
		}
		r.log.Debugf("docker events: %v", err)
		kv.Sleep(ctx, 2*time.Second)
		poke() // events may have been missed
	}
}

type record struct {
	kv.ReplicatedNetwork
	version uint64
}

// Sync runs one pass: publish the cluster networks made here, withdraw
// those removed here, create the others' networks, remove stale replicas.
// Nothing is removed unless both the store and Docker answered.
func (r *Replicator) Sync(ctx context.Context) error {
	st, err := r.look(ctx)
	if err != nil {
		return err
	}
	errs := r.publish(ctx, st)
	errs = append(errs, r.withdrawOrReplicate(ctx, st)...)
	r.removeStaleReplicas(ctx, st)
	return errors.Join(errs...)
}

// syncState is what one Sync pass works from.
type syncState struct {
	records map[string]record
	// unreadable names records that cannot be read: they say neither what
	// to create nor that their network is gone, so their names are left
	// alone (not published over, not removed) until someone fixes or
	// deletes the key.
	unreadable map[string]bool
	drivers    []string // the tartan plugins enabled here
	locals     []DockerNetwork
	byName     map[string]DockerNetwork
	byID       map[string]bool
}

// look reads the records and what this host's Docker has.
func (r *Replicator) look(ctx context.Context) (syncState, error) {
	st := syncState{records: map[string]record{}, unreadable: map[string]bool{}, byName: map[string]DockerNetwork{}, byID: map[string]bool{}}
	if _, err := kv.ListJSON(ctx, r.store, kv.ClusterNetsPrefix, func(_ string, ver uint64, c kv.ReplicatedNetwork) error {
		st.records[c.Name] = record{c, ver}
		return nil
	}, func(e *kv.DecodeError) {
		name := strings.TrimPrefix(e.Key, kv.ClusterNetsPrefix)
		st.unreadable[name] = true
		r.warnOnce(name, fmt.Sprintf("%v; network %s is left as it is on this host until then", e, name))
	}); err != nil {
		return st, fmt.Errorf("list cluster networks: %w", err)
	}
	var err error
	if st.drivers, err = r.docker.Drivers(ctx); err != nil {
		return st, fmt.Errorf("list tartan plugins: %w", err)
	}
	if st.locals, err = r.docker.Networks(ctx, st.drivers); err != nil {
		return st, fmt.Errorf("list Docker networks: %w", err)
	}
	for _, n := range st.locals {
		st.byName[n.Spec.Name], st.byID[n.ID] = n, true
	}
	return st, nil
}

// publish records the networks made here with -o tartan.cluster=true.
func (r *Replicator) publish(ctx context.Context, st syncState) []error {
	var errs []error
	for _, n := range st.locals {
		if !n.Cluster || n.Source != "" {
			continue
		}
		rec, ok := st.records[n.Spec.Name]
		switch {
		case !ok && st.unreadable[n.Spec.Name]:
		case !ok || (rec.Origin == r.host && rec.OriginID != n.ID && !st.byID[rec.OriginID]):
			spec := n.Spec
			spec.Origin, spec.OriginID, spec.Created = r.host, n.ID, time.Now().UTC()
			if _, err := kv.PutJSON(ctx, r.store, kv.ClusterNetPath(spec.Name), spec, rec.version); err != nil {
				errs = append(errs, fmt.Errorf("publish %s: %w", spec.Name, err))
				continue
			}
			st.records[spec.Name] = record{spec, 0}
			r.log.WithFields(logrus.Fields{"network": spec.Name, "subnet": spec.Subnet}).Info("cluster network published")
		case rec.OriginID != n.ID:
			r.warnOnce(n.Spec.Name, fmt.Sprintf("network %s was made with -o %s=true here and on host %s: this host's is not replicated; remove one of them", n.Spec.Name, driver.OptCluster, rec.Origin))
		}
	}
	return errs
}

// withdrawOrReplicate withdraws the records of networks removed where they
// were made, and creates the other hosts' networks here.
func (r *Replicator) withdrawOrReplicate(ctx context.Context, st syncState) []error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(st.records)) {
		rec := st.records[name]
		if rec.Origin == r.host {
			// Withdraw only what this host's own plugin, enabled and listed
			// by Docker, no longer has: during docker plugin enable the
			// first pass runs before Docker lists the plugin as enabled, and
			// its networks are missing from the listing.
			if !st.byID[rec.OriginID] && slices.Contains(st.drivers, rec.Driver) {
				// Removed where it was made: withdraw it everywhere.
				if err := r.store.Delete(ctx, kv.ClusterNetPath(name), rec.version); err != nil && !errors.Is(err, kv.ErrNotFound) {
					errs = append(errs, fmt.Errorf("withdraw %s: %w", name, err))
				} else {
					r.log.WithField("network", name).Info("cluster network withdrawn")
				}
			}
			continue
		}
		if local, ok := st.byName[name]; ok {
			if local.Source == "" && local.ID != rec.OriginID {
				r.warnOnce(name, fmt.Sprintf("network %s of host %s is not replicated here: a network of that name exists; remove it to get the cluster's", name, rec.Origin))
			}
			continue
		}
		driver, ipamDriver := pick(st.drivers, rec.Driver), pick(st.drivers, rec.IPAMDriver)
		if driver == "" || ipamDriver == "" {
			errs = append(errs, fmt.Errorf("create %s: no enabled tartan plugin here", name))
			continue
		}
		if err := r.docker.Create(ctx, rec.ReplicatedNetwork, driver, ipamDriver); err != nil {
			errs = append(errs, fmt.Errorf("create %s: %w", name, err))
			continue
		}
		r.log.WithFields(logrus.Fields{"network": name, "subnet": rec.Subnet, "origin": rec.Origin}).Info("cluster network created here")
	}
	return errs
}

// removeStaleReplicas removes replicas whose record is gone (or names
// another network); Docker refuses while endpoints remain, and a later pass
// retries.
func (r *Replicator) removeStaleReplicas(ctx context.Context, st syncState) {
	for _, n := range st.locals {
		if n.Source == "" {
			continue
		}
		if rec, ok := st.records[n.Spec.Name]; (ok && rec.OriginID == n.Source) || st.unreadable[n.Spec.Name] {
			continue
		}
		if err := r.docker.Remove(ctx, n.ID); err != nil {
			r.log.WithField("network", n.Spec.Name).Debugf("replica not removed yet: %v", err)
			continue
		}
		r.log.WithField("network", n.Spec.Name).Info("cluster network removed here")
	}
}

func (r *Replicator) warnOnce(name, msg string) {
	if r.warned[name] != msg {
		r.warned[name] = msg
		r.log.Warn(msg)
	}
}

// pick chooses how this host names the plugin: as the origin did if a
// plugin of that name is here, else the first tartan plugin.
func pick(drivers []string, want string) string {
	if slices.Contains(drivers, want) {
		return want
	}
	if len(drivers) > 0 {
		return drivers[0]
	}
	return ""
}
