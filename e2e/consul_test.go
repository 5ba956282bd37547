//go:build e2e

package e2e

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// With STORE=consul://… against a real Consul server: the store holds the
// pool, the block and the addresses; 100 containers started concurrently get
// 100 distinct addresses; removing them and the network leaves no address,
// block, network or kernel object behind.
func TestConsulStore(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "c1", 2)
	consul := testkit.StartConsul(t, &s.NS, "127.0.0.1", 8500)
	s.InstallPlugin(t, "STORE=consul://127.0.0.1:8500", "LOG_LEVEL=debug")

	s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.40.0.0/16", "big")
	a := s.daemon(t, "ca", "big")
	s.mustReach(t, "big", "ca")
	s.transfer(t, "big", "ca")
	s.mustReach(t, "big", s.internet)
	keys := strings.Join(consul.Keys(t, "tartan/"), "\n")
	for _, want := range []string{"tartan/pools/10.40.0.0-16", "tartan/blocks/10.40.0.0-16/10.40.0.0-26",
		"tartan/addrs/10.40.0.0-16/10.40.0.1", "tartan/addrs/10.40.0.0-16/" + a, "tartan/networks/10.40.0.0-16", "tartan/vnis/256", "tartan/hosts/"} {
		if !strings.Contains(keys, want) {
			t.Fatalf("store lacks %s:\n%s", want, keys)
		}
	}

	// host-gw against Consul too, isolated from the vxlan network.
	s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=host-gw", "--subnet", "10.42.0.0/16", "gw")
	s.daemon(t, "cgw", "gw")
	s.mustReach(t, "gw", "cgw")
	s.transfer(t, "gw", "cgw")
	s.mustNotReach(t, "gw", a)
	s.mustNotReach(t, "big", s.ip(t, "cgw"))
	s.MustDocker(t, "rm", "-f", "ca", "cgw")
	s.removeNetworks(t, "gw")

	// 100 containers, four at a time.
	const total, workers = 100, 4
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, total)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += workers {
				if _, err := s.Docker("run", "-d", "--name", fmt.Sprintf("m%03d", i), "--network", "big", "tbox", "sleep", "3600"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("started %d containers in %s", total, time.Since(began).Round(time.Millisecond))
	names := make([]string, total)
	for i := range names {
		names[i] = fmt.Sprintf("m%03d", i)
	}
	out := s.MustDocker(t, append([]string{"inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"}, names...)...)
	ips := strings.Fields(out)
	seen := map[string]bool{}
	for _, ip := range ips {
		if seen[ip] {
			t.Fatalf("duplicate IP %s", ip)
		}
		seen[ip] = true
	}
	if len(seen) != total {
		t.Fatalf("%d distinct addresses for %d containers", len(seen), total)
	}
	var stored []string
	for _, k := range consul.Keys(t, "tartan/addrs/10.40.0.0-16/") {
		if ip := k[strings.LastIndex(k, "/")+1:]; ip != "10.40.0.1" {
			stored = append(stored, ip)
		}
	}
	sort.Strings(stored)
	sort.Strings(ips)
	if strings.Join(stored, " ") != strings.Join(ips, " ") {
		t.Fatalf("store and Docker disagree:\nstore  %v\ndocker %v", stored, ips)
	}
	if n := strings.Count(s.MustIP(t, "route", "show", "proto", "84"), "\n"); n != total {
		t.Fatalf("%d routes for %d containers", n, total)
	}
	start := time.Now()
	for i := 0; i < total; i += 50 {
		s.MustDocker(t, append([]string{"rm", "-f"}, names[i:i+50]...)...)
	}
	t.Logf("removed %d containers in %s", total, time.Since(start).Round(time.Millisecond))
	testbed.Eventually(t, 60*time.Second, "every container's address released (only the gateway stays)", func() error {
		if left := consul.Keys(t, "tartan/addrs/10.40.0.0-16/"); len(left) != 1 {
			return fmt.Errorf("%d addresses left: %v", len(left), left[:min(5, len(left))])
		}
		return nil
	})
	s.removeNetworks(t, "big")
	s.kernelClean(t)
	for _, k := range consul.Keys(t, "tartan/") {
		if !hostOwnKey(k) && k != "tartan/pools.guard" {
			t.Fatalf("left in Consul after docker network rm: %s", k)
		}
	}

	// An unreachable store fails requests (rather than hanging them),
	// naming the store; an unparsable one names the setting.
	s.MustDocker(t, "plugin", "disable", "-f", testbed.PluginName)
	s.MustDocker(t, "plugin", "set", testbed.PluginName, "STORE=consul://127.0.0.1:9")
	s.MustDocker(t, "plugin", "enable", testbed.PluginName)
	start = time.Now()
	o, err := s.Docker("network", "create", tnet, tipam, "--subnet", "10.41.0.0/16", "nostore")
	mustFail(t, o, err, "consul at http://127.0.0.1:9", "store unavailable")
	t.Logf("with the store unreachable, docker network create failed after %s", time.Since(start).Round(time.Millisecond))
	s.MustDocker(t, "plugin", "disable", "-f", testbed.PluginName)
	s.MustDocker(t, "plugin", "set", testbed.PluginName, "STORE=etcd://somewhere")
	s.MustDocker(t, "plugin", "enable", testbed.PluginName)
	o, err = s.Docker("network", "create", tnet, tipam, "--subnet", "10.41.0.0/16", "nostore")
	mustFail(t, o, err, "STORE=etcd://somewhere", "use consul://")
	if ls := s.MustDocker(t, "network", "ls", "-q", "-f", "name=nostore"); ls != "" {
		t.Fatalf("a failed create left network %s", ls)
	}
}
