//go:build e2e

package e2e

import (
	"slices"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/internal/testkit"
)

// Docker 28 asks a driver whether its networks need a gateway address from
// IPAM (GwAllocCheck). tartan's routed networks route through a link-local
// gateway, so on 28 and later the pool holds no gateway address: the first
// address goes to a container. A --gateway the user gives is still reserved,
// and older engines still reserve the first address.
func TestGatewayAllocation(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "gw1", 2)
	consul := testkit.StartConsul(t, &s.NS, "127.0.0.1", 8500)
	s.InstallPlugin(t, "STORE=consul://127.0.0.1:8500")
	skips := s.EngineMajor(t) >= 28
	t.Logf("engine %d: gateway allocation skipped: %v", s.EngineMajor(t), skips)

	s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.50.0.0/24", "nogw")
	s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=host-gw", "--subnet", "10.51.0.0/24", "--gateway", "10.51.0.254", "givengw")
	held := func(pool string) []string {
		var out []string
		for _, k := range consul.Keys(t, "tartan/addrs/"+pool+"/") {
			out = append(out, k[strings.LastIndex(k, "/")+1:])
		}
		return out
	}
	pool := consul.Get(t, "tartan/pools/10.50.0.0-24")
	t.Logf("store after network create: addrs/10.50.0.0-24 %v; addrs/10.51.0.0-24 %v; pools/10.50.0.0-24 %s", held("10.50.0.0-24"), held("10.51.0.0-24"), pool)
	if got := held("10.50.0.0-24"); skips != (len(got) == 0) {
		t.Fatalf("engine 28+ skips the gateway (%v), yet the pool holds %v", skips, got)
	}
	if strings.Contains(pool, `"gateway"`) == skips {
		t.Fatalf("pool record %s (gateway skipped: %v)", pool, skips)
	}
	if got := held("10.51.0.0-24"); !slices.Equal(got, []string{"10.51.0.254"}) {
		t.Fatalf("--gateway 10.51.0.254 not reserved: %v", got)
	}

	// The containers work either way, and on 28 the first takes .1.
	s.daemon(t, "g1", "nogw")
	s.daemon(t, "g2", "nogw")
	s.daemon(t, "g3", "givengw")
	if skips && s.ip(t, "g1") != "10.50.0.1" && s.ip(t, "g2") != "10.50.0.1" {
		t.Fatalf("with no gateway the pool's first address went to no container: %s %s", s.ip(t, "g1"), s.ip(t, "g2"))
	}
	s.mustReach(t, "nogw", "g1")
	s.mustReach(t, "nogw", "g2")
	s.mustReach(t, "givengw", "g3")
	s.mustReach(t, "nogw", s.internet)
	s.MustDocker(t, "rm", "-f", "g1", "g2", "g3")
	s.removeNetworks(t, "nogw", "givengw")
	if left := consul.Keys(t, "tartan/addrs/"); len(left) != 0 {
		t.Fatalf("left in the store: %v", left)
	}
	s.kernelClean(t)
}
