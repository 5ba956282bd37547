package routing

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/kernel"
	"github.com/tartan-net/tartan/driver/routing/routingtest"
	"github.com/tartan-net/tartan/kv"
)

// Update's walk over two sorted plans leaves the kernel exactly as a full
// Apply of the new plan does, for plans that differ in any way (blocks that
// come and go, hosts that move, exceptions).
func TestUpdateMatchesApply(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pool := netip.MustParsePrefix("10.244.0.0/16")
	n := Network{ID: "n", Pool: pool, Device: "tartan.7", Peering: devicePeering{"tartan.7"}}
	plan := func() Plan {
		v := View{Hosts: map[string]kv.Host{}, BlockBits: 26}
		for h := range 6 {
			id := fmt.Sprintf("h%d", h)
			v.Hosts[id] = kv.Host{ID: id, Address: fmt.Sprintf("10.98.0.%d", 10+rng.IntN(8)), Renewed: time.Now()}
		}
		for b := range 40 {
			if rng.IntN(2) == 0 {
				v.Blocks = append(v.Blocks, kv.Block{CIDR: fmt.Sprintf("10.244.%d.%d/26", b/4, b%4*64), Host: fmt.Sprintf("h%d", rng.IntN(6)), Expires: time.Now().Add(time.Hour)})
			}
		}
		for range rng.IntN(5) {
			v.Exceptions = append(v.Exceptions, kv.Address{IP: fmt.Sprintf("10.244.%d.%d", rng.IntN(10), 1+rng.IntN(60)), Host: fmt.Sprintf("h%d", rng.IntN(6)), Kind: kv.KindEndpoint})
		}
		return Compute(witnessed(Input{Self: "h0", Net: n, Underlay: testUnderlay, TTL: time.Hour, Now: time.Now(), View: v}))
	}
	state := func(k *routingtest.Kernel) string {
		routes := slices.Collect(func(yield func(string) bool) {
			for _, r := range k.Routes() {
				if !yield(r.String()) {
					return
				}
			}
		})
		slices.Sort(routes)
		neighs, _ := k.Neighs(n.Device)
		fdbs, _ := k.FDBs(n.Device)
		slices.SortFunc(neighs, compareNeigh)
		slices.SortFunc(fdbs, compareFDB)
		return fmt.Sprint(routes, neighs, fdbs)
	}
	for i := range 200 {
		was, now := plan(), plan()
		a, b := routingtest.New(), routingtest.New()
		if err := Apply(a, n, was); err != nil {
			t.Fatal(err)
		}
		if err := Update(a, n, was, now); err != nil {
			t.Fatal(err)
		}
		if err := Apply(b, n, now); err != nil {
			t.Fatal(err)
		}
		if got, want := state(a), state(b); got != want {
			t.Fatalf("round %d: after Update\n%s\nafter Apply\n%s", i, got, want)
		}
	}
	var _ kernel.Route
}
