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
