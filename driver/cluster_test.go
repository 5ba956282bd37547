package driver

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/hostgw"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// racyStore lets a test run something just before the first Put of a key.
type racyStore struct {
	kv.Store
	key    string
	before func()
}

func (s *racyStore) Put(ctx context.Context, key string, v []byte, version uint64) (uint64, error) {
	if key == s.key && s.before != nil {
		f := s.before
		s.before = nil
		f()
	}
	return s.Store.Put(ctx, key, v, version)
}

func testDriver(host string, store kv.Store) *Driver {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	return New(store, kv.NewMemory(), nil, &firewall.Firewall{}, Config{Host: host}, log)
}

// With -o tartan.vni=N on two hosts at once, the host that lost
// the race for the network record deleted vnis/N, freeing the winner's VNI
// for another network. Only a claim this call made is given back.
func TestExplicitVNIRaceKeepsWinnersClaim(t *testing.T) {
	ctx := context.Background()
	mem := kv.NewMemory()
	pool := netip.MustParsePrefix("10.61.0.0/16")
	opts := Options{Backend: vxlan.Name, VNI: 100}
	store := &racyStore{Store: mem, key: kv.NetworkPath(pool.String())}
	b := testDriver("b", store)
	store.before = func() { // a wins the network record while b is past its VNI claim
		if _, _, err := testDriver("a", mem).clusterNetwork(ctx, pool, netip.Prefix{}, opts, false); err != nil {
			t.Errorf("a: %v", err)
		}
	}
	// b claims VNI 100 first (created), then loses the record to a... but a
	// finds b's claim and keeps it; whichever order, the claim must survive.
	rec, _, err := b.clusterNetwork(ctx, pool, netip.Prefix{}, opts, false)
	if err != nil || rec.VNI != 100 {
		t.Fatalf("b: %+v %v", rec, err)
	}
	if p, err := mem.Get(ctx, kv.VNIPath(100)); err != nil || string(p.Value) != pool.String() {
		t.Fatalf("vnis/100 after the race: %q %v", p.Value, err)
	}
}

// --internal, the MTU and directrouting were per host: a network
// internal on one host had egress on another. They must agree cluster-wide.
func TestOptionsAgreeWithClusterRecord(t *testing.T) {
	pool := netip.MustParsePrefix("10.63.0.0/16")
	cur := kv.PoolNetwork{Pool: pool.String(), Backend: vxlan.Name, VNI: 5, Internal: true, MTU: 1400}
	same := Options{Backend: vxlan.Name, Internal: true, MTU: 1400}
	if err := agrees(pool, cur, same); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		o    Options
		word string
	}{
		{Options{Backend: hostgw.Name, Internal: true, MTU: 1400}, "tartan.backend=vxlan"},
		{Options{Backend: vxlan.Name, VNI: 6, Internal: true, MTU: 1400}, "VNI 5"},
		{Options{Backend: vxlan.Name, MTU: 1400}, "--internal"},
		{Options{Backend: vxlan.Name, Internal: true}, "mtu=1400"},
		{Options{Backend: vxlan.Name, Internal: true, MTU: 1400, DirectRouting: true}, "directrouting=false"},
	} {
		err := agrees(pool, cur, c.o)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), c.word) || !strings.Contains(err.Error(), pool.String()) {
			t.Errorf("%+v: %v, want an error naming %q", c.o, err, c.word)
		}
	}
	// A swarm manager is not told about --internal: its record does not decide it.
	cur.Swarm = true
	if err := agrees(pool, cur, Options{Backend: vxlan.Name, MTU: 1400}); err != nil {
		t.Fatal(err)
	}
}

// A failed create takes back the record it made only while no other host
// holds the pool: a holder may have created its network with the record.
func TestUndoKeepsRecordOtherHostsMayUse(t *testing.T) {
	ctx := context.Background()
	mem := kv.NewMemory()
	pool := netip.MustParsePrefix("10.62.0.0/16")
	poolRec := kv.Pool{CIDR: pool.String(), BlockBits: 26, Holders: map[string]bool{"a/tartan-local": true, "b/tartan-local": true}}
	if _, err := kv.PutJSON(ctx, mem, kv.PoolPath(pool.String()), poolRec, 0); err != nil {
		t.Fatal(err)
	}
	rec, undo, err := testDriver("a", mem).clusterNetwork(ctx, pool, netip.Prefix{}, Options{Backend: vxlan.Name}, false)
	if err != nil {
		t.Fatal(err)
	}
	undo(ctx)
	if _, err := mem.Get(ctx, kv.NetworkPath(pool.String())); err != nil {
		t.Fatalf("record b may use, after a's undo: %v", err)
	}
	if err := mem.Delete(ctx, kv.NetworkPath(pool.String()), 0); err != nil {
		t.Fatal(err)
	}
	if err := kv.DeleteVNIOf(ctx, mem, rec.VNI, rec.Pool); err != nil {
		t.Fatal(err)
	}
	delete(poolRec.Holders, "b/tartan-local")
	if _, err := kv.Update(ctx, mem, kv.PoolPath(pool.String()), func(p *kv.Pool, _ bool) error { *p = poolRec; return nil }); err != nil {
		t.Fatal(err)
	}
	rec, undo, err = testDriver("a", mem).clusterNetwork(ctx, pool, netip.Prefix{}, Options{Backend: vxlan.Name}, false)
	if err != nil {
		t.Fatal(err)
	}
	undo(ctx)
	for _, k := range []string{kv.NetworkPath(pool.String()), kv.VNIPath(rec.VNI)} {
		if _, err := mem.Get(ctx, k); !errors.Is(err, kv.ErrNotFound) {
			t.Fatalf("%s after the sole holder's undo: %v", k, err)
		}
	}
}

// gatedStore holds every Get until open is closed, and says on entered
// that one is waiting: a Consul that does not answer yet.
type gatedStore struct {
	kv.Store
	entered chan struct{}
	open    chan struct{}
}

func (s gatedStore) Get(ctx context.Context, key string) (kv.Pair, error) {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	select {
	case <-s.open:
	case <-ctx.Done():
		return kv.Pair{}, ctx.Err()
	}
	return s.Store.Get(ctx, key)
}

// CreateNetwork held the lock every request waits on across its
// store calls, so a slow Consul stalled Join, Leave and DeleteEndpoint of
// every other network of the host. Here the store does not answer
// CreateNetwork at all until Join has returned: Join returns only if it
// waits for nothing of CreateNetwork's.
func TestSlowStoreDoesNotStallOtherRequests(t *testing.T) {
	store := gatedStore{Store: kv.NewMemory(), entered: make(chan struct{}, 1), open: make(chan struct{})}
	d := testDriver("a", store)
	d.st.networks["n1"] = localNetwork{ID: "n1", Pool: "10.64.0.0/24", Backend: vxlan.Name, Gateway: "169.254.1.1"}
	d.st.endpoints["e1"] = localEndpoint{ID: "e1", Network: "n1", IP: "10.64.0.2", HostIf: "tne1", PeerIf: "tpe1"}
	done := make(chan error, 1)
	go func() {
		done <- d.CreateNetwork(context.Background(), NetworkRequest{ID: "n2", Space: "tartan-local", Pool: netip.MustParsePrefix("10.65.0.0/24")})
	}()
	<-store.entered // CreateNetwork waits on the store now
	joined := make(chan error, 1)
	go func() {
		_, err := d.Join(context.Background(), "e1")
		joined <- err
	}()
	select {
	case err := <-joined:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		close(store.open)
		t.Fatal("Join waited for another network's store calls")
	}
	select {
	case err := <-done:
		t.Fatalf("CreateNetwork finished before its store answered: %v", err)
	default:
	}
	close(store.open)
	<-done // it goes on in this test's network namespace; let it end here
}

// pools records the pool releases the driver makes.
type pools struct {
	mu       sync.Mutex
	released []string
}

func (p *pools) RequestAddress(context.Context, ipam.AddressRequest) (netip.Prefix, error) {
	return netip.Prefix{}, errors.New("not in this test")
}
func (p *pools) ReleaseAddress(context.Context, ipam.PoolID, string) error { return nil }
func (p *pools) ReleasePool(_ context.Context, id ipam.PoolID) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.released = append(p.released, id.String())
	return nil
}

// As Docker orders things: on docker network rm Docker releases
// the pool before it deletes the network; on a refused duplicate create it
// releases the pool a live network holds. Both defer to the network's
// deletion, which releases the pool once.
func TestPoolReleaseWaitsForTheNetwork(t *testing.T) {
	p := &pools{}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	d := New(kv.NewMemory(), kv.NewMemory(), p, &firewall.Firewall{}, Config{Host: "a"}, log)
	d.st.networks["n1"] = localNetwork{ID: "n1", Pool: "10.66.0.0/24", Backend: hostgw.Name, Space: ipam.LocalSpace, Gateway: "169.254.1.1"}
	d.st.networks["n2"] = localNetwork{ID: "n2", Pool: "10.67.0.0/24", Backend: hostgw.Name, Space: ipam.LocalSpace, Gateway: "169.254.1.2"}
	id := ipam.PoolID{Space: ipam.LocalSpace, CIDR: netip.MustParsePrefix("10.66.0.0/24")}
	if !d.DeferRelease(id) || !d.st.networks["n1"].ReleasePending {
		t.Fatal("a release of a pool a network uses is not deferred")
	}
	if d.DeferRelease(ipam.PoolID{Space: ipam.LocalSpace, CIDR: netip.MustParsePrefix("10.68.0.0/24")}) {
		t.Fatal("a release of a pool no network uses is deferred")
	}
	ctx := context.Background()
	if err := d.DeleteNetwork(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	if len(p.released) != 0 {
		t.Fatalf("a network whose pool release was not deferred released %v", p.released)
	}
	if err := d.DeleteNetwork(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if len(p.released) != 1 || p.released[0] != id.String() {
		t.Fatalf("released %v, want %s once", p.released, id)
	}
}

// Issue 24, audit M2: while a VXLAN network has no plan yet (after a start,
// through a store outage), the VXLAN port admits the last complete peer
// set the firewall held (kept in the local store across restarts), never
// anyone; without one, nobody.
func TestVXLANPortFailsClosed(t *testing.T) {
	ctx := context.Background()
	local := kv.NewMemory()
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	d := New(kv.NewMemory(), local, nil, &firewall.Firewall{}, Config{Host: "a"}, log)
	n := localNetwork{ID: "n1", Pool: "10.64.0.0/24", Backend: vxlan.Name, VNI: 300, Device: "tartan.300", Gateway: "169.254.1.1"}
	d.st.networks[n.ID] = n
	d.startRoutingLocked(n)
	state := func() firewall.State {
		d.mu.Lock()
		defer d.mu.Unlock()
		st, _ := d.firewallStateLocked()
		return st
	}
	if st := state(); st.VXLANPort == 0 || st.Peers == nil || len(st.Peers) != 0 {
		t.Fatalf("no plan and no peer set kept: want the port closed to all, got %+v", st.Peers)
	}
	kept := []netip.Addr{netip.MustParseAddr("10.98.0.12")}
	d.keepPeers(kept)
	restarted := New(kv.NewMemory(), local, nil, &firewall.Firewall{}, Config{Host: "a"}, log)
	restarted.loadPeers(ctx)
	restarted.st.networks[n.ID] = n
	restarted.startRoutingLocked(n)
	restarted.mu.Lock()
	st, _ := restarted.firewallStateLocked()
	restarted.mu.Unlock()
	if len(st.Peers) != 1 || st.Peers[0] != kept[0] {
		t.Fatalf("after a restart with no plan yet: peers %v, want the kept %v", st.Peers, kept)
	}
}

// Issue 24, audit L5: the address of an endpoint that a CreateEndpoint is
// still making (here, waiting for another call on the endpoint) is held:
// the orphan sweep does not take it for an orphan meanwhile.
func TestHoldingCountsArrivingEndpoints(t *testing.T) {
	d := testDriver("a", kv.NewMemory())
	d.st.networks["n1"] = localNetwork{ID: "n1", Pool: "10.64.0.0/24", Backend: vxlan.Name, Gateway: "169.254.1.1"}
	release := d.lockEndpoint("e1") // another call on the endpoint
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = d.CreateEndpoint(context.Background(), EndpointRequest{NetworkID: "n1", EndpointID: "e1", Addr: netip.MustParsePrefix("10.64.0.9/24")})
	}()
	deadline := time.Now().Add(time.Minute)
	for !d.Holding()["10.64.0.0/24"]["10.64.0.9"] {
		if time.Now().After(deadline) {
			release()
			t.Fatal("an arriving endpoint's address is not held")
		}
		time.Sleep(10 * time.Millisecond)
	}
	release()
	<-done
	if err := d.DeleteEndpoint(context.Background(), "e1"); err != nil { // its veth, if it was made
		t.Fatal(err)
	}
}
