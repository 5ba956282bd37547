package plugin

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
)

// ownershipBed is the handler over a driver whose local state holds a
// network (and an endpoint) of pool 10.95.0.0/24 without kernel work: as
// a restarted plugin finds them.
func ownershipBed(t *testing.T, endpointIP string) (*Handler, kv.Store) {
	t.Helper()
	return ownershipBedOn(t, kv.NewMemory(), endpointIP)
}

func ownershipBedOn(t *testing.T, cluster kv.Store, endpointIP string) (*Handler, kv.Store) {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	local := kv.NewMemory()
	ctx := context.Background()
	if _, err := kv.PutJSON(ctx, local, "local/networks/n1", map[string]any{"id": "n1", "pool": "10.95.0.0/24", "backend": "host-gw",
		"space": ipam.LocalSpace, "gateway": "169.254.1.1"}, 0); err != nil {
		t.Fatal(err)
	}
	if endpointIP != "" {
		if _, err := kv.PutJSON(ctx, local, "local/endpoints/e1", map[string]any{"id": "e1", "network": "n1", "ip": endpointIP,
			"hostIf": "tne1", "peerIf": "tpe1"}, 0); err != nil {
			t.Fatal(err)
		}
	}
	im := ipam.New(cluster, ipam.Config{Host: "h1"}, log)
	drv := driver.New(cluster, local, im, &firewall.Firewall{}, driver.Config{Host: "h1"}, log)
	if err := drv.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	return NewHandler(drv, im, NewOutbox(local, im, drv, log), log, nil), cluster
}

// A refused duplicate create (the same subnet as a live network
// of the host) is rolled back by Docker with ReleasePool; before the fix
// that release removed the pool, the network record and the addresses
// under the live network. Docker also releases a network's pool before it
// deletes the network: the release is deferred to the deletion.
func TestReleasePoolOfALiveNetworkIsDeferred(t *testing.T) {
	h, cluster := ownershipBed(t, "")
	code, out := call(t, h, "/IpamDriver.RequestPool", `{"AddressSpace":"tartan-local","Pool":"10.95.0.0/24"}`)
	if code != 200 {
		t.Fatalf("RequestPool: %d %v", code, out)
	}
	code, out = call(t, h, "/IpamDriver.RequestAddress", `{"PoolID":"local:10.95.0.0/24","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:01"}}`)
	if code != 200 {
		t.Fatalf("RequestAddress: %d %v", code, out)
	}
	if code, out = call(t, h, "/IpamDriver.ReleasePool", `{"PoolID":"local:10.95.0.0/24"}`); code != 200 {
		t.Fatalf("ReleasePool: %d %v", code, out)
	}
	ctx := context.Background()
	for _, k := range []string{kv.PoolPath("10.95.0.0/24"), kv.AddressPath("10.95.0.0/24", "10.95.0.1")} {
		if _, err := cluster.Get(ctx, k); err != nil {
			t.Fatalf("%s after the release of a pool a live network uses: %v", k, err)
		}
	}
	code, out = call(t, h, "/IpamDriver.RequestAddress", `{"PoolID":"local:10.95.0.0/24","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:02"}}`)
	if code != 200 {
		t.Fatalf("the live network cannot allocate after the refused create: %d %v", code, out)
	}
	// The network is deleted: its deferred release happens then.
	if code, out = call(t, h, "/NetworkDriver.DeleteNetwork", `{"NetworkID":"n1"}`); code != 200 {
		t.Fatalf("DeleteNetwork: %d %v", code, out)
	}
	if ps, _, _ := cluster.List(ctx, ""); len(ps) > 1 {
		t.Fatalf("left in the store after the network was deleted: %d keys (want only %s)", len(ps), kv.PoolsGuard)
	}
}

// Docker releases an address with no allocation identity; a late
// second release (dockerd crashed during cleanup) after the address went to
// a new container of the same host freed the new holder's record.
func TestLateReleaseKeepsNewHolder(t *testing.T) {
	h, cluster := ownershipBed(t, "10.95.0.1")
	call(t, h, "/IpamDriver.RequestPool", `{"AddressSpace":"tartan-local","Pool":"10.95.0.0/24"}`)
	code, out := call(t, h, "/IpamDriver.RequestAddress", `{"PoolID":"local:10.95.0.0/24","Address":"10.95.0.1","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:02"}}`)
	if code != 200 {
		t.Fatalf("RequestAddress: %d %v", code, out)
	}
	if code, out = call(t, h, "/IpamDriver.ReleaseAddress", `{"PoolID":"local:10.95.0.0/24","Address":"10.95.0.1"}`); code != 200 {
		t.Fatalf("ReleaseAddress: %d %v", code, out)
	}
	var rec kv.Address
	if _, err := kv.GetJSON(context.Background(), cluster, kv.AddressPath("10.95.0.0/24", "10.95.0.1"), &rec); err != nil || rec.MAC != "02:42:00:00:00:02" {
		t.Fatalf("the live endpoint's address after a late release: %+v %v", rec, err)
	}
}

// downStore fails every call with ErrUnavailable while down is set.
type downStore struct {
	kv.Store
	down atomic.Bool
}

func (s *downStore) Get(ctx context.Context, key string) (kv.Pair, error) {
	if s.down.Load() {
		return kv.Pair{}, fmt.Errorf("get %s: %w", key, kv.ErrUnavailable)
	}
	return s.Store.Get(ctx, key)
}

// A release that failed while the store was down leaked its
// address for good (Docker releases once). It is queued and retried, and a
// retry never frees a newer allocation of the address.
func TestReleaseQueuedWhileStoreIsDown(t *testing.T) {
	for _, reallocated := range []bool{false, true} {
		store := &downStore{Store: kv.NewMemory()}
		h, _ := ownershipBedOn(t, store, "")
		call(t, h, "/IpamDriver.RequestPool", `{"AddressSpace":"tartan-local","Pool":"10.95.0.0/24"}`)
		code, out := call(t, h, "/IpamDriver.RequestAddress", `{"PoolID":"local:10.95.0.0/24","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:01"}}`)
		if code != 200 {
			t.Fatalf("RequestAddress: %d %v", code, out)
		}
		ip := strings.Split(out["Address"].(string), "/")[0]
		store.down.Store(true)
		if code, out = call(t, h, "/IpamDriver.ReleaseAddress", `{"PoolID":"local:10.95.0.0/24","Address":"`+ip+`"}`); code != 200 {
			t.Fatalf("ReleaseAddress while the store is down: %d %v (want it queued)", code, out)
		}
		ctx := context.Background()
		if landed, left, _ := h.outbox.Flush(ctx); landed != 0 || left != 1 {
			t.Fatalf("flush while down: %d landed, %d left", landed, left)
		}
		store.down.Store(false)
		time.Sleep(10 * time.Millisecond) // a later allocation is later
		if reallocated {                  // the store's record was freed and the address given again meanwhile
			if err := store.Delete(ctx, kv.AddressPath("10.95.0.0/24", ip), 0); err != nil {
				t.Fatal(err)
			}
			if code, out = call(t, h, "/IpamDriver.RequestAddress", `{"PoolID":"local:10.95.0.0/24","Address":"`+ip+`","Options":{"com.docker.network.endpoint.macaddress":"02:42:00:00:00:02"}}`); code != 200 {
				t.Fatalf("RequestAddress: %d %v", code, out)
			}
		}
		if landed, left, err := h.outbox.Flush(ctx); err != nil || landed != 1 || left != 0 {
			t.Fatalf("flush: %d landed, %d left, %v", landed, left, err)
		}
		_, err := store.Get(ctx, kv.AddressPath("10.95.0.0/24", ip))
		if reallocated && err != nil {
			t.Fatalf("the queued release freed a newer allocation: %v", err)
		}
		if !reallocated && err == nil {
			t.Fatal("the queued release did not land")
		}
	}
}
