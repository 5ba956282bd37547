package driver

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

func TestPlanPeers(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	snap := snapshot{
		Hosts: map[string]kv.Host{
			"a": {ID: "a", Address: "10.98.0.11", Renewed: now},
			"b": {ID: "b", Address: "10.98.0.12", Renewed: now},
			"c": {ID: "c", Address: "10.97.5.13", Renewed: now}, // another segment
			"d": {ID: "d", Address: "10.98.0.14", Renewed: now.Add(-48 * time.Hour)},
		},
		Blocks: []kv.Block{
			{CIDR: "10.244.0.0/26", Host: "a", Expires: live},
			{CIDR: "10.244.0.64/26", Host: "b", Expires: live},
			{CIDR: "10.244.0.128/26", Host: "b", Expires: live},
			{CIDR: "10.244.0.192/26", Host: "c", Expires: live},
			{CIDR: "10.244.1.0/26", Host: "d", Expires: now.Add(-time.Hour)}, // expired, host gone
		},
		Addrs: []kv.Address{
			{IP: "10.244.0.70", Host: "b", Kind: kv.KindEndpoint},
			{IP: "10.244.0.71", Host: "c", Kind: kv.KindEndpoint}, // borrowed from b's block
			{IP: "10.244.0.5", Host: "b", Kind: kv.KindEndpoint},  // borrowed from a's (ours): reach it at b
			{IP: "10.244.0.1", Host: "b", Kind: kv.KindGateway},
			{IP: "10.244.1.9", Host: "d", Kind: kv.KindEndpoint}, // its host is gone: no route
		},
	}
	under := kernel.Underlay{Interface: "eth1", Address: netip.MustParseAddr("10.98.0.11"), Prefix: netip.MustParsePrefix("10.98.0.0/24")}
	in := planInput{Self: "a", Underlay: under, TTL: 24 * time.Hour, Now: now, Snap: snap,
		Net: netRec{Pool: "10.244.0.0/16", Backend: BackendVXLAN, VNI: 7, Device: "tartan.7"}}

	vx := planPeers(in)
	got := routes(vx)
	want := "10.244.0.5/32 via 10.98.0.12 dev tartan.7 onlink|10.244.0.64/26 via 10.98.0.12 dev tartan.7 onlink|10.244.0.71/32 via 10.97.5.13 dev tartan.7 onlink|10.244.0.128/26 via 10.98.0.12 dev tartan.7 onlink|10.244.0.192/26 via 10.97.5.13 dev tartan.7 onlink"
	if got != want {
		t.Fatalf("vxlan routes:\n%s\nwant\n%s", got, want)
	}
	if len(vx.Neighs) != 2 || len(vx.FDBs) != 2 || len(vx.Problems) != 0 {
		t.Fatalf("one neighbour and one FDB entry per remote host: %+v", vx)
	}
	if vx.Neighs[0].MAC != kernel.VTEPMAC("b", 7).String() || vx.FDBs[0].Dst.String() != "10.98.0.12" {
		t.Fatalf("entries for b: %+v %+v", vx.Neighs[0], vx.FDBs[0])
	}

	in.Net.Backend = BackendHostGW
	gw := planPeers(in)
	if got := routes(gw); got != "10.244.0.5/32 via 10.98.0.12 dev eth1|10.244.0.64/26 via 10.98.0.12 dev eth1|10.244.0.128/26 via 10.98.0.12 dev eth1" {
		t.Fatalf("host-gw routes: %s", got)
	}
	if len(gw.Problems) != 2 || !strings.Contains(gw.Problems[0], "not on this host's L2 segment 10.98.0.0/24") || !strings.Contains(gw.Problems[0], "tartan.directrouting=true") {
		t.Fatalf("host-gw must report the peer off the segment: %v", gw.Problems)
	}

	in.Net.Backend, in.Net.Direct = BackendVXLAN, true
	dr := planPeers(in)
	if got := routes(dr); !strings.Contains(got, "10.244.0.64/26 via 10.98.0.12 dev eth1|") || !strings.Contains(got, "10.244.0.192/26 via 10.97.5.13 dev tartan.7 onlink") {
		t.Fatalf("directrouting routes: %s", got)
	}
	if len(dr.Neighs) != 1 || dr.Neighs[0].IP.String() != "10.97.5.13" || len(dr.Problems) != 0 {
		t.Fatalf("directrouting uses VXLAN only for the peer off the segment: %+v", dr)
	}
}

func routes(p peerPlan) string {
	var s []string
	for _, r := range p.Routes {
		s = append(s, r.String())
	}
	return strings.Join(s, "|")
}

// M6: the peer snapshot used to fail on the first record that did not
// decode ("peer sync (working state kept)"), so one bad hosts/ value froze
// every network's peers on every host. Now the bad record is left out and
// named in the plan's problems, which the watcher logs.
func TestSnapshotSkipsUnreadableRecords(t *testing.T) {
	ctx, store := context.Background(), kv.NewMemory()
	pool := "10.244.0.0/16"
	put := func(key, value string) {
		t.Helper()
		if _, err := store.Put(ctx, key, []byte(value), 0); err != nil {
			t.Fatal(err)
		}
	}
	put(kv.HostPath("b"), `{"id":"b","address":"10.98.0.12"}`)
	put(kv.HostPath("zzz"), "garbage")
	put(kv.BlockPath(pool, "10.244.0.64/26"), `{"cidr":"10.244.0.64/26","host":"b"}`)
	put(kv.BlockPath(pool, "10.244.0.128/26"), "{")
	put(kv.AddressPath(pool, "10.244.0.70"), "[]")
	d := &Driver{cluster: store}
	snap, err := d.snapshot(ctx, pool)
	if err != nil {
		t.Fatalf("one bad record must not fail the snapshot: %v", err)
	}
	if len(snap.Hosts) != 1 || len(snap.Blocks) != 1 || len(snap.Addrs) != 0 {
		t.Fatalf("snapshot: %+v", snap)
	}
	plan := planPeers(planInput{Self: "a", Net: netRec{Pool: pool, Backend: BackendVXLAN, VNI: 7, Device: "tartan.7"},
		TTL: time.Hour, Now: time.Now(), Snap: snap})
	problems := strings.Join(plan.Problems, "\n")
	for _, key := range []string{"hosts/zzz", "blocks/10.244.0.0-16/10.244.0.128-26", "addrs/10.244.0.0-16/10.244.0.70"} {
		if !strings.Contains(problems, key) {
			t.Errorf("problems do not name %s:\n%s", key, problems)
		}
	}
}

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
	d := &Driver{local: local, log: log}
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

// H2: a block record only had to overlap the pool to become a route on
// every host, so "0.0.0.0/0" replaced every host's default route and
// "10.0.0.0/8" captured a whole range; blocks of another size than the
// pool's were routed too. Before the fix the three blocks below became
// three routes via b and no problem was reported.
func TestPlanPeersRejectsForeignPrefixes(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	in := planInput{Self: "a", TTL: 24 * time.Hour, Now: now,
		Net: netRec{Pool: "10.244.0.0/16", Backend: BackendVXLAN, VNI: 7, Device: "tartan.7"},
		Snap: snapshot{
			Hosts:     map[string]kv.Host{"b": {ID: "b", Address: "10.98.0.12", Renewed: now}},
			BlockBits: 26,
			Blocks: []kv.Block{
				{CIDR: "0.0.0.0/0", Host: "b", Expires: live},
				{CIDR: "10.0.0.0/8", Host: "b", Expires: live},
				{CIDR: "10.244.0.0/20", Host: "b", Expires: live}, // inside, but not a /26
			},
		}}
	plan := planPeers(in)
	if len(plan.Routes) != 0 || len(plan.Neighs) != 0 || len(plan.FDBs) != 0 {
		t.Fatalf("foreign blocks were routed: %s", routes(plan))
	}
	if len(plan.Problems) != 3 {
		t.Fatalf("want one problem per rejected block, got %q", plan.Problems)
	}
	for i, want := range []string{`"0.0.0.0/0" of host b ignored: not inside the network's pool 10.244.0.0/16`,
		`"10.0.0.0/8" of host b ignored: not inside`, `"10.244.0.0/20" of host b ignored: pool 10.244.0.0/16 has /26 blocks`} {
		if !strings.Contains(plan.Problems[i], want) {
			t.Errorf("problem %d: %q lacks %q", i, plan.Problems[i], want)
		}
	}
}

// H2: host addresses and address records from the store were used
// unchecked: a host registered at 127.0.0.1, 0.0.0.0, a multicast or
// link-local address, or inside the pool itself, became a next hop, and
// address records outside the pool were dropped without a word. Before the
// fix this plan had six routes and no problems.
func TestPlanPeersRejectsBadNextHopsAndAddresses(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	live := now.Add(time.Hour)
	hosts := map[string]kv.Host{"good": {ID: "good", Address: "10.98.0.12", Renewed: now}}
	var blocks []kv.Block
	bad := []string{"127.0.0.1", "0.0.0.0", "224.0.0.5", "169.254.1.1", "10.244.9.9", "fe80::1", "nonsense"}
	for i, addr := range append([]string{"10.98.0.12"}, bad...) {
		id := "good"
		if i > 0 {
			id = fmt.Sprintf("bad%d", i)
			hosts[id] = kv.Host{ID: id, Address: addr, Renewed: now}
		}
		blocks = append(blocks, kv.Block{CIDR: fmt.Sprintf("10.244.%d.0/26", i), Host: id, Expires: live})
	}
	blocks = append(blocks, kv.Block{CIDR: "10.244.100.5/26", Host: "good", Expires: live}) // host bits set
	in := planInput{Self: "a", TTL: 24 * time.Hour, Now: now,
		Net: netRec{Pool: "10.244.0.0/16", Backend: BackendVXLAN, VNI: 7, Device: "tartan.7"},
		Snap: snapshot{Hosts: hosts, BlockBits: 26, Blocks: blocks, Addrs: []kv.Address{
			{IP: "10.245.0.9", Host: "good", Kind: kv.KindEndpoint}, // outside the pool
			{IP: "bogus", Host: "good", Kind: kv.KindEndpoint},
		}}}
	plan := planPeers(in)
	if got := routes(plan); got != "10.244.0.0/26 via 10.98.0.12 dev tartan.7 onlink" {
		t.Fatalf("routes: %s", got)
	}
	if len(plan.Problems) != len(bad)+3 {
		t.Fatalf("want one problem per rejected record, got %d:\n%s", len(plan.Problems), strings.Join(plan.Problems, "\n"))
	}
	all := strings.Join(plan.Problems, "\n")
	for _, want := range append(bad, "10.244.100.5/26", "host bits set", "10.245.0.9", "bogus") {
		if !strings.Contains(all, want) {
			t.Errorf("no problem names %q:\n%s", want, all)
		}
	}
}

// H2: the snapshot carries the pool record's block size, so that blocks of
// another size are refused.
func TestSnapshotCarriesBlockBits(t *testing.T) {
	ctx, store := context.Background(), kv.NewMemory()
	pool := "10.244.0.0/16"
	if _, err := kv.PutJSON(ctx, store, kv.PoolPath(pool), kv.Pool{CIDR: pool, BlockBits: 26}, 0); err != nil {
		t.Fatal(err)
	}
	snap, err := (&Driver{cluster: store}).snapshot(ctx, pool)
	if err != nil || snap.BlockBits != 26 {
		t.Fatalf("%+v %v", snap, err)
	}
	if _, err := store.Put(ctx, kv.PoolPath("10.245.0.0/16"), []byte("garbage"), 0); err != nil {
		t.Fatal(err)
	}
	snap, err = (&Driver{cluster: store}).snapshot(ctx, "10.245.0.0/16")
	if err != nil || snap.BlockBits != 0 || len(snap.Problems) != 1 || !strings.Contains(snap.Problems[0], "pools/10.245.0.0-16") {
		t.Fatalf("unreadable pool record: %+v %v", snap, err)
	}
}

// H2 (defence in depth): applyPeers refuses a peer route outside the
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
	d := &Driver{}
	plan := peerPlan{Routes: []kernel.Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Link: "h2veth0", Via: netip.MustParseAddr("10.78.0.9")},
		{Dst: netip.MustParsePrefix("10.231.1.0/26"), Link: "h2veth0", Via: netip.MustParseAddr("10.78.0.9")},
	}}
	err := d.applyPeers(netRec{Pool: "10.231.0.0/16"}, plan)
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
