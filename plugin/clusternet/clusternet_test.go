package clusternet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/tartan-net/tartan/kv"
)

// fakeDocker is one host's Docker for the replicator's unit tests (the e2e
// test drives real daemons).
type fakeDocker struct {
	nets      map[string]DockerNetwork // by ID
	endpoints map[string]int           // by ID
	next      int
	disabled  bool // the plugin is not (yet) listed as enabled
}

func newFake() *fakeDocker {
	return &fakeDocker{nets: map[string]DockerNetwork{}, endpoints: map[string]int{}}
}

func (f *fakeDocker) Networks(_ context.Context, drivers []string) ([]DockerNetwork, error) {
	var out []DockerNetwork
	if len(drivers) == 0 {
		return nil, nil // Docker lists networks of the enabled tartan plugins
	}
	for _, n := range f.nets {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
func (f *fakeDocker) Drivers(context.Context) ([]string, error) {
	if f.disabled {
		return nil, nil
	}
	return []string{"tartan:latest"}, nil
}
func (f *fakeDocker) Create(_ context.Context, s kv.ReplicatedNetwork, driver, _ string) error {
	for _, n := range f.nets {
		if n.Spec.Name == s.Name {
			return errors.New("network with name " + s.Name + " already exists")
		}
	}
	f.next++
	id := fmt.Sprintf("replica%d", f.next)
	s.Driver = driver
	f.nets[id] = DockerNetwork{ID: id, Cluster: true, Source: s.OriginID, Spec: s}
	return nil
}
func (f *fakeDocker) Remove(_ context.Context, id string) error {
	if f.endpoints[id] > 0 {
		return errors.New("has active endpoints")
	}
	delete(f.nets, id)
	return nil
}
func (f *fakeDocker) Changes(ctx context.Context, _ func()) error { <-ctx.Done(); return ctx.Err() }

func (f *fakeDocker) byName(name string) (DockerNetwork, bool) {
	for _, n := range f.nets {
		if n.Spec.Name == name {
			return n, true
		}
	}
	return DockerNetwork{}, false
}

func TestReplication(t *testing.T) {
	ctx := context.Background()
	store := kv.NewMemory()
	log := logrus.New()
	log.SetOutput(io.Discard)
	d1, d2 := newFake(), newFake()
	r1 := New(store, d1, "h1", time.Minute, log)
	r2 := New(store, d2, "h2", time.Minute, log)
	sync := func() {
		t.Helper()
		for _, r := range []*Replicator{r1, r2, r1, r2} {
			if err := r.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	spec := kv.ReplicatedNetwork{Name: "web", Driver: "tartan:latest", IPAMDriver: "tartan:latest", Subnet: "10.80.0.0/16",
		Options: map[string]string{"tartan.cluster": "true", "tartan.backend": "vxlan"}}
	d1.nets["orig"] = DockerNetwork{ID: "orig", Cluster: true, Spec: spec}
	d1.nets["plain"] = DockerNetwork{ID: "plain", Spec: kv.ReplicatedNetwork{Name: "local-only", Subnet: "10.81.0.0/16"}}
	sync()
	rep, ok := d2.byName("web")
	if !ok || rep.Source != "orig" || rep.Spec.Subnet != "10.80.0.0/16" || rep.Spec.Options["tartan.backend"] != "vxlan" {
		t.Fatalf("replica on h2: %+v %v", rep, ok)
	}
	if _, ok := d2.byName("local-only"); ok {
		t.Fatal("a network without -o tartan.cluster=true was replicated")
	}
	if len(d1.nets) != 2 {
		t.Fatalf("h1 got a replica of its own network: %v", d1.nets)
	}
	// Removed on h2 by hand: it comes back.
	delete(d2.nets, rep.ID)
	sync()
	if _, ok := d2.byName("web"); !ok {
		t.Fatal("a replica removed by hand did not come back")
	}
	// Removed where it was made: withdrawn, and removed on h2 once h2 has
	// no endpoints on it.
	rep, _ = d2.byName("web")
	d2.endpoints[rep.ID] = 1
	delete(d1.nets, "orig")
	sync()
	if _, err := store.Get(ctx, kv.ClusterNetPath("web")); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("record still there: %v", err)
	}
	if _, ok := d2.byName("web"); !ok {
		t.Fatal("a replica with endpoints was removed")
	}
	d2.endpoints[rep.ID] = 0
	sync()
	if _, ok := d2.byName("web"); ok {
		t.Fatal("the replica outlived its origin")
	}
	// Same name made on two hosts: the first is published, the second left
	// alone (and not removed).
	d1.nets["a"] = DockerNetwork{ID: "a", Cluster: true, Spec: spec}
	sync()
	rep, _ = d2.byName("web")
	delete(d2.nets, rep.ID)
	d2.nets["b"] = DockerNetwork{ID: "b", Cluster: true, Spec: spec}
	sync()
	var rec kv.ReplicatedNetwork
	if _, err := kv.GetJSON(ctx, store, kv.ClusterNetPath("web"), &rec); err != nil || rec.Origin != "h1" || rec.OriginID != "a" {
		t.Fatalf("record %+v %v", rec, err)
	}
	if _, ok := d2.nets["b"]; !ok {
		t.Fatal("h2's own network of the same name was removed")
	}
}

// M6: one cluster network record that could not be read used to fail every
// pass (no network replicated anywhere). Now the others are replicated and
// the name of the unreadable one is left alone: its replica is not removed
// (there is no readable record, but that does not mean the network is
// gone) and a network of that name made here does not overwrite it.
func TestUnreadableRecordIsLeftAlone(t *testing.T) {
	ctx := context.Background()
	store := kv.NewMemory()
	log, hook := logtest.NewNullLogger()
	d1, d2 := newFake(), newFake()
	r1, r2 := New(store, d1, "h1", time.Minute, log), New(store, d2, "h2", time.Minute, log)
	web := kv.ReplicatedNetwork{Name: "web", Driver: "tartan:latest", IPAMDriver: "tartan:latest", Subnet: "10.80.0.0/16"}
	db := web
	db.Name, db.Subnet = "db", "10.82.0.0/16"
	d1.nets["orig-web"] = DockerNetwork{ID: "orig-web", Cluster: true, Spec: web}
	for _, r := range []*Replicator{r1, r2} {
		if err := r.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := d2.byName("web"); !ok {
		t.Fatal("web was not replicated")
	}
	if _, err := store.Put(ctx, kv.ClusterNetPath("web"), []byte("garbage"), 0); err == nil {
		t.Fatal("the record should exist already")
	}
	p, _ := store.Get(ctx, kv.ClusterNetPath("web"))
	if _, err := store.Put(ctx, kv.ClusterNetPath("web"), []byte("garbage"), p.Version); err != nil {
		t.Fatal(err)
	}
	d1.nets["orig-db"] = DockerNetwork{ID: "orig-db", Cluster: true, Spec: db}
	for _, r := range []*Replicator{r1, r2, r1, r2} {
		if err := r.Sync(ctx); err != nil {
			t.Fatalf("one unreadable record must not fail the pass: %v", err)
		}
	}
	if _, ok := d2.byName("db"); !ok {
		t.Fatal("db was not replicated next to an unreadable record")
	}
	if _, ok := d2.byName("web"); !ok {
		t.Fatal("the replica of a network whose record cannot be read was removed")
	}
	if p, _ := store.Get(ctx, kv.ClusterNetPath("web")); string(p.Value) != "garbage" {
		t.Fatalf("the unreadable record was overwritten: %q", p.Value)
	}
	warned := 0
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.WarnLevel && strings.Contains(e.Message, "clusternets/web") {
			warned++
		}
	}
	if warned != 2 { // once per replicator, not once per pass
		t.Fatalf("want one warning naming clusternets/web per host, got %d", warned)
	}
}

// During docker plugin enable the replicator's first pass runs
// before Docker lists the plugin as enabled: it saw no tartan network and
// withdrew every cluster network this host made, so every other host
// removed and re-created its copy.
func TestEnableDoesNotWithdraw(t *testing.T) {
	ctx := context.Background()
	store := kv.NewMemory()
	log := logrus.New()
	log.SetOutput(io.Discard)
	d1 := newFake()
	r1 := New(store, d1, "h1", time.Minute, log)
	spec := kv.ReplicatedNetwork{Name: "web", Driver: "tartan:latest", IPAMDriver: "tartan:latest", Subnet: "10.80.0.0/16",
		Options: map[string]string{"tartan.cluster": "true"}}
	d1.nets["orig"] = DockerNetwork{ID: "orig", Cluster: true, Spec: spec}
	if err := r1.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	d1.disabled = true // the plugin restarts: Docker does not list it yet
	if err := r1.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Get(ctx, kv.ClusterNetPath("web")); err != nil {
		t.Fatalf("the record was withdrawn while the plugin was being enabled: %v", err)
	}
	d1.disabled = false
	delete(d1.nets, "orig") // really removed, the plugin listed
	if err := r1.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Get(ctx, kv.ClusterNetPath("web")); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("the record of a removed network stays: %v", err)
	}
}
