//go:build e2e

package e2e

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// The store is input, not truth; bad input gets a clear error (issue 9).
// Each part failed before its fix:
//   - M6: one undecodable record (hosts/zzz) stopped every allocation;
//   - H2: a block record 0.0.0.0/0 became a route replacing the default
//     route, 10.0.0.0/8 one that captured a whole range;
//   - M11: --subnet 0.0.0.0/0, 169.254.0.0/16, 127.0.0.0/24 and the
//     underlay's own subnet were accepted;
//   - M8: two containers published one host port, and a port a host
//     process listens on was taken over;
//   - M7: a failed underlay lookup during a renewal registered an empty
//     address, and every peer withdrew its routes to the host at once.
func TestStoreInput(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "si1", 9)
	consul := testkit.StartConsul(t, &s.NS, "127.0.0.1", 8500)
	s.InstallPlugin(t, "STORE=consul://127.0.0.1:8500", "LEASE_TTL=10s")
	s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "10.91.0.0/24", "si")
	s.daemon(t, "c1", "si")
	host := endpointHost(t, s, "si", "c1")
	put := func(key, value string) {
		t.Helper()
		if out, err := consul.CLI("kv", "put", "tartan/"+key, value); err != nil {
			t.Fatalf("consul kv put %s: %v %s", key, err, out)
		}
	}

	// M6: an undecodable host record is skipped with a log line.
	put("hosts/zzz", "notjson")
	s.daemon(t, "c2", "si")
	s.mustReach(t, "si", "c2")
	testbed.Eventually(t, 10*time.Second, "the bad record is named in the log", func() error {
		if !strings.Contains(s.PluginLog(), "hosts/zzz") {
			return errors.New("not yet")
		}
		return nil
	})

	// H2: block records outside the pool never become routes.
	defRoute := s.MustIP(t, "route", "show", "default")
	now, _ := json.Marshal(time.Now().UTC())
	put("hosts/peer1", `{"id":"peer1","address":"10.99.9.7","renewed":`+string(now)+`}`)
	// Each block as a claim writes it: the record and its feed entry
	// (blockfeed/, which routing watches).
	for key, cidr := range map[string]string{"0.0.0.0-0": "0.0.0.0/0", "10.0.0.0-8": "10.0.0.0/8", "10.91.0.128-26": "10.91.0.128/26"} {
		blk := `{"cidr":"` + cidr + `","pool":"10.91.0.0/24","host":"peer1","expires":"2099-01-01T00:00:00Z"}`
		put("blocks/10.91.0.0-24/"+key, blk)
		put("blockfeed/10.91.0.0-24/"+key, `{"block":`+blk+`,"at":`+string(now)+`}`)
	}
	testbed.Eventually(t, 10*time.Second, "the valid peer block is routed", func() error {
		if !strings.Contains(s.MustIP(t, "route", "show", "proto", "84"), "10.91.0.128/26") {
			return errors.New("not yet")
		}
		return nil
	})
	if got := s.MustIP(t, "route", "show", "default"); got != defRoute {
		t.Fatalf("default route changed by a store record: %q, was %q", got, defRoute)
	}
	for _, r := range strings.Split(s.MustIP(t, "route", "show", "proto", "84"), "\n") {
		if strings.HasPrefix(r, "default") || strings.HasPrefix(r, "10.0.0.0/8") {
			t.Fatalf("a route outside the pool: %s", r)
		}
	}
	for _, k := range []string{"hosts/zzz", "hosts/peer1", "blocks/10.91.0.0-24/0.0.0.0-0", "blocks/10.91.0.0-24/10.0.0.0-8", "blocks/10.91.0.0-24/10.91.0.128-26",
		"blockfeed/10.91.0.0-24/0.0.0.0-0", "blockfeed/10.91.0.0-24/10.0.0.0-8", "blockfeed/10.91.0.0-24/10.91.0.128-26"} {
		if out, err := consul.CLI("kv", "delete", "tartan/"+k); err != nil {
			t.Fatalf("consul kv delete %s: %v %s", k, err, out)
		}
	}

	// M11: special ranges and the underlay's own subnet are refused.
	for _, c := range []struct{ subnet, word string }{
		{"0.0.0.0/0", "0.0.0.0/8"}, {"169.254.0.0/16", "169.254.0.0/16"}, {"127.0.0.0/24", "127.0.0.0/8"}, {"10.99.9.0/24", "underlay"},
	} {
		out, err := s.Docker("network", "create", tnet, tipam, "--subnet", c.subnet, "bad")
		mustFail(t, out, err, c.subnet, c.word)
	}
	// The unspecified address asks for an automatic pool of that size, as
	// with Docker's own IPAM. (docker network inspect shows the pool IPAM
	// chose on 20.10 and 29, the request as written on 26 and 28: the
	// container's address and the pool's masquerade rule tell.)
	s.MustDocker(t, "network", "create", tnet, tipam, "--subnet", "0.0.0.0/25", "auto25")
	s.MustDocker(t, "run", "-d", "--name", "a25", "--network", "auto25", "tbox", "sleep", "600")
	ip, err := netip.ParseAddr(s.ip(t, "a25"))
	if err != nil || !netip.MustParsePrefix("10.240.0.0/12").Contains(ip) {
		t.Fatalf("--subnet 0.0.0.0/25 gave a container %v (%v), want an address from the automatic range 10.240.0.0/12", ip, err)
	}
	pool, _ := ip.Prefix(25)
	if nat, err := s.Exec(testbed.Iptables(), "-t", "nat", "-S", firewall.PostroutingChain); err != nil || !strings.Contains(nat, "-s "+pool.String()+" ") {
		t.Fatalf("--subnet 0.0.0.0/25: no pool %s among the masqueraded pools: %v\n%s", pool, err, nat)
	}
	s.MustDocker(t, "rm", "-f", "a25")
	s.removeNetworks(t, "auto25")

	// M8: one host port, one owner.
	s.MustDocker(t, "run", "-d", "--name", "p1", "--network", "si", "-p", "18080:80", "tbox", "sleep", "3600")
	out, err := s.Docker("run", "-d", "--name", "p2", "--network", "si", "-p", "18080:80", "tbox", "sleep", "3600")
	mustFail(t, out, err, "18080", "already published")
	listener := exec.Command("nsenter", "--net="+s.Path(), "busybox", "nc", "-l", "-p", "2222")
	if err := listener.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = listener.Process.Signal(syscall.SIGKILL); _ = listener.Wait() })
	time.Sleep(500 * time.Millisecond)
	out, err = s.Docker("run", "-d", "--name", "p3", "--network", "si", "-p", "2222:80", "tbox", "sleep", "3600")
	mustFail(t, out, err, "2222")

	// M7: the default route goes away across several renewals (every 1 s
	// with LEASE_TTL=10s): the registered address never becomes empty.
	gw := strings.Fields(defRoute)[2]
	s.MustIP(t, "route", "del", "default")
	restored := false
	defer func() {
		if !restored {
			_, _ = s.IP("route", "add", "default", "via", gw)
		}
	}()
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(300 * time.Millisecond) {
		rec, err := consul.CLI("kv", "get", "tartan/hosts/"+host)
		if err != nil || !strings.Contains(rec, `"address":"10.99.9.2"`) {
			t.Fatalf("host record while the default route is gone: %s %v", rec, err)
		}
	}
	s.MustIP(t, "route", "add", "default", "via", gw)
	restored = true

	_, _ = s.Docker("rm", "-f", "p2", "p3") // a refused run can leave a created container
	s.MustDocker(t, "rm", "-f", "c1", "c2", "p1")
	s.removeNetworks(t, "si")
	s.kernelClean(t)
}
