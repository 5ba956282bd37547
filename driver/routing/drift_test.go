package routing

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/kv"
)

// Drift: a healthy kernel shows none; a route deleted by hand, a neighbour
// whose MAC was changed and a stray FDB entry show as what the next repair
// would do, and nothing is changed by looking.
func TestDrift(t *testing.T) {
	store := kv.NewMemory()
	pool := "10.244.0.0/16"
	put(t, store, kv.PoolPath(pool), `{"cidr":"10.244.0.0/16","blockBits":26}`)
	put(t, store, kv.HostPath("a"), `{"id":"a","address":"10.98.0.11","renewed":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.HostPath("b"), `{"id":"b","address":"10.98.0.12","renewed":"2099-01-01T00:00:00Z"}`)
	put(t, store, kv.BlockPath(pool, "10.244.0.64/26"), `{"cidr":"10.244.0.64/26","host":"b","expires":"2099-01-01T00:00:00Z"}`)
	r, k := startRouter(t, store, Network{ID: "n1", Pool: netip.MustParsePrefix(pool), Device: "tartan.7", Peering: devicePeering{"tartan.7"}})
	plan := waitPlan(t, r, "n1", func(p Plan) bool { return len(p.Routes) == 1 && len(p.Neighs) == 1 && len(p.FDBs) == 1 })
	if d, err := r.Drift(); err != nil || len(d["n1"]) != 0 {
		t.Fatalf("drift of a healthy kernel: %v %v", d, err)
	}
	_ = k.DeleteRoute(plan.Routes[0])
	n := plan.Neighs[0]
	n.MAC = "02:00:00:00:00:99"
	_ = k.ReplaceNeigh(n)
	_ = k.ReplaceFDB(kernel.FDB{Link: "tartan.7", MAC: "02:00:00:00:00:98", Dst: netip.MustParseAddr("10.98.0.99")})
	before := k.Ops()
	d, err := r.Drift()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(d["n1"], "\n")
	for _, want := range []string{"missing route 10.244.0.64/26", "missing neighbour " + plan.Neighs[0].IP.String() + " lladdr " + plan.Neighs[0].MAC,
		"extra FDB entry 02:00:00:00:00:98 dst 10.98.0.99"} {
		if !strings.Contains(got, want) {
			t.Fatalf("drift does not say %q:\n%s", want, got)
		}
	}
	if after := k.Ops(); after.Writes != before.Writes {
		t.Fatalf("looking for drift wrote %d entries", after.Writes-before.Writes)
	}
	if err := r.Repair(); err != nil {
		t.Fatal(err)
	}
	if d, err := r.Drift(); err != nil || len(d["n1"]) != 0 {
		t.Fatalf("drift after a repair: %v %v", d, err)
	}
}
