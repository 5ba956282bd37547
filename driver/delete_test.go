package driver

import (
	"context"
	"io"
	"os"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/kv"
)

// TestFailedDeleteKeepsWatcher: a DeleteNetwork that fails after stopping
// the network's watcher leaves the network with its watcher running again.
// Before the fix it stayed without one (no new peers until a restart).
func TestFailedDeleteKeepsWatcher(t *testing.T) {
	if os.Geteuid() == 0 && os.Getenv("TARTAN_TEST_IN_NETNS") == "" {
		t.Skip("as root this test runs only in its own network namespace (TestMain, unshare)")
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	d := New(kv.NewMemory(), kv.NewMemory(), nil, &firewall.Firewall{}, Config{Host: "h1"}, log)
	// The step that fails: deleting the network's device. The kernel never
	// deletes the loopback device, so this fails without touching anything.
	n := localNetwork{ID: "net-fail", Pool: "10.254.0.0/16", Backend: vxlan.Name, Device: "lo", Gateway: "169.254.1.1"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d.Start(ctx)
	d.mu.Lock()
	d.st.networks[n.ID] = n
	d.startRoutingLocked(n)
	d.mu.Unlock()

	if err := d.DeleteNetwork(ctx, n.ID); err == nil {
		t.Fatal("deleting the loopback device succeeded")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.st.networks[n.ID]; !ok {
		t.Fatal("the network is gone after a failed delete")
	}
	if !d.routes.Has(n.ID) {
		t.Fatal("the network has no watcher after a failed delete")
	}
	d.routes.Remove(n.ID)
}

// TestHoldingKeepsShimAddress: a macvlan network's host-access shim holds
// its address as an endpoint does. Before the fix the orphan sweep, a
// minute on, took the shim's address record for an orphan and removed it
// (the address could then be given to a container beside the shim).
func TestHoldingKeepsShimAddress(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	d := New(kv.NewMemory(), kv.NewMemory(), nil, &firewall.Firewall{}, Config{Host: "h1"}, log)
	d.st.networks["mv"] = localNetwork{ID: "mv", Pool: "10.70.0.0/16", Backend: "macvlan", ShimIP: "10.70.2.2"}
	d.st.endpoints["e1"] = localEndpoint{ID: "e1", Network: "mv", IP: "10.70.2.3"}
	h := d.Holding()["10.70.0.0/16"]
	if !h["10.70.2.2"] || !h["10.70.2.3"] || len(h) != 2 {
		t.Fatalf("holding %v, want the shim's 10.70.2.2 and the endpoint's 10.70.2.3", h)
	}
}
