package driver

import (
	"context"
	"net/netip"
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
