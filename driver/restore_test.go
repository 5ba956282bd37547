package driver

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing"
	"github.com/tartan-net/tartan/kv"
)

// M6 (and L12): a damaged local record used to fail Restore, and with it
// the plugin's start. Now Restore loads everything else and logs the key.
func TestRestoreSkipsUnreadableRecords(t *testing.T) {
	ctx, local := context.Background(), kv.NewMemory()
	if _, err := local.Put(ctx, localNetworks+"good", []byte(`{"id":"good","pool":"10.244.0.0/16"}`), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := local.Put(ctx, localNetworks+"bad", []byte("garbage"), 0); err != nil {
		t.Fatal(err)
	}
	log, hook := logtest.NewNullLogger()
	d := New(kv.NewMemory(), local, nil, &firewall.Firewall{}, Config{Host: "h1"}, log)
	if err := d.Restore(ctx); err != nil {
		t.Fatalf("restore: %v", err)
	}
	if _, ok := d.st.networks["good"]; !ok || len(d.st.networks) != 1 {
		t.Fatalf("networks: %+v", d.st.networks)
	}
	found := false
	for _, e := range hook.AllEntries() {
		found = found || (e.Level == logrus.WarnLevel && e.Data["key"] == localNetworks+"bad")
	}
	if !found {
		t.Fatalf("no warning names %sbad", localNetworks)
	}
}

// H2 (defence in depth): routing.Apply refuses a peer route outside the
// network's pool even if a plan has one, and prunes tartan's peer routes
// that merely overlap the pool. Before the fix the default route below was
// installed and the 10.0.0.0/8 route was kept (its address is outside the
// pool). Runs in the data-plane tests' own network namespace only.
func TestApplyPeersStaysInsideThePool(t *testing.T) {
	if os.Getenv("TARTAN_TEST_IN_NETNS") == "" {
		t.Skip("needs root and unshare (runs in the data-plane tests' network namespace)")
	}
	run := func(cmd string) string {
		t.Helper()
		out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
		return string(out)
	}
	run("ip link add h2veth0 type veth peer name h2veth1 && ip link set h2veth1 up && ip addr add 10.78.0.1/24 dev h2veth0 && ip link set h2veth0 up && " +
		"ip route add 10.0.0.0/8 via 10.78.0.9 dev h2veth0 proto 84")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", "h2veth0").Run() })
	before := run("ip route show default")
	plan := routing.Plan{Routes: []kernel.Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Link: "h2veth0", Via: netip.MustParseAddr("10.78.0.9")},
		{Dst: netip.MustParsePrefix("10.231.1.0/26"), Link: "h2veth0", Via: netip.MustParseAddr("10.78.0.9")},
	}}
	err := routing.Apply(routing.Netlink{}, routing.Network{Pool: netip.MustParsePrefix("10.231.0.0/16")}, plan)
	if err == nil || !strings.Contains(err.Error(), "refusing peer route 0.0.0.0/0") {
		t.Fatalf("want the out-of-pool route refused, got %v", err)
	}
	if after := run("ip route show default"); after != before {
		t.Fatalf("default route changed:\n%s\nnow\n%s", before, after)
	}
	got := run("ip route show proto 84 dev h2veth0")
	if strings.Contains(got, "10.0.0.0/8") || !strings.Contains(got, "10.231.1.0/26 via 10.78.0.9") {
		t.Fatalf("peer routes:\n%s", got)
	}
}
