//go:build e2e || bench

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/plugin/api"
)

// hostStatus is what tartan status --json says on h.
func hostStatus(t testing.TB, h *testbed.Host) api.HostStatus {
	t.Helper()
	var st api.HostStatus
	if err := json.Unmarshal([]byte(h.Tartan(t, "status", "--json")), &st); err != nil {
		t.Fatalf("tartan status --json on %s: %v", h.Name, err)
	}
	return st
}

// TestMain removes what an earlier run of this group left, and what this
// one makes if it is stopped or runs out of time (testkit.Main); the
// plugin the run built once goes after the tests.
func TestMain(m *testing.M) {
	os.Exit(testkit.MainThen(m, testbed.RemoveTreeBuild))
}

// single is one test host with an "outside" namespace behind its default
// route: 198.18.<n>.1 stands for the internet.
type single struct {
	*testbed.Host
	outside  testkit.NS
	internet string
}

func newSingle(t *testing.T, name string, n int) *single {
	t.Helper()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "curl", "busybox")
	hostNS, out, internet := plumb(t, name, n)
	h := testbed.StartDockerd(t, hostNS)
	h.Image(t)
	return &single{Host: h, outside: out, internet: internet}
}

// plumb makes a host namespace (tt-<name>) and its outside (tt-<name>o)
// behind its default route, with 198.18.<n>.1 on the outside.
func plumb(t *testing.T, name string, n int) (host, outside testkit.NS, internet string) {
	t.Helper()
	host = testkit.NewNS(t, "tt-"+name)
	outside = testkit.NewNS(t, "tt-"+name+"o")
	testkit.Link(t, host, "ext0", fmt.Sprintf("10.99.%d.2/24", n), outside, "in0", fmt.Sprintf("10.99.%d.1/24", n), 1500)
	host.MustIP(t, "route", "add", "default", "via", fmt.Sprintf("10.99.%d.1", n))
	internet = fmt.Sprintf("198.18.%d.1", n)
	outside.MustIP(t, "addr", "add", internet+"/32", "dev", "lo")
	return host, outside, internet
}

// run runs a throwaway container and returns its output.
func (s *single) run(t *testing.T, network string, cmd string) (string, error) {
	t.Helper()
	return s.Docker("run", "--rm", "--network", network, "tbox", "sh", "-c", cmd)
}

// daemon starts a long-running container.
func (s *single) daemon(t *testing.T, name, network string, args ...string) string {
	t.Helper()
	full := append([]string{"run", "-d", "--name", name, "--network", network}, args...)
	if len(args) == 0 || strings.HasPrefix(args[len(args)-1], "-") {
		full = append(full, "tbox", "sleep", "3600")
	}
	s.MustDocker(t, full...)
	return s.ip(t, name)
}

func (s *single) ip(t *testing.T, name string) string {
	t.Helper()
	return s.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
}

func (s *single) mustReach(t *testing.T, network, target string) {
	t.Helper()
	testbed.Eventually(t, time.Minute, fmt.Sprintf("a container on %s reaches %s", network, target), func() error {
		if out, err := s.run(t, network, "ping -c 1 -W 2 "+target); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
}

func (s *single) mustNotReach(t *testing.T, network, target string) {
	t.Helper()
	if out, err := s.run(t, network, "ping -c 2 -W 1 "+target); err == nil {
		t.Fatalf("a container on %s reaches %s, and must not:\n%s", network, target, out)
	}
}

// transfer sends 8 MiB over TCP from an httpd in container server to a
// wget in a new container and checks the checksum.
func (s *single) transfer(t *testing.T, network, server string) {
	t.Helper()
	s.MustDocker(t, "exec", server, "sh", "-c", "mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1024 count=8192 2>/dev/null && httpd -p 8080 -h /www")
	want := strings.Fields(s.MustDocker(t, "exec", server, "md5sum", "/www/blob"))[0]
	out, err := s.run(t, network, "wget -q -O - http://"+server+":8080/blob | md5sum")
	if err != nil {
		t.Fatalf("transfer from %s: %v\n%s", server, err, out)
	}
	if got := strings.Fields(out)[0]; got != want {
		t.Fatalf("transfer from %s: checksum %s, want %s", server, got, want)
	}
}

// removeNetworks removes networks once Docker has released their endpoints:
// Docker deletes a removed container's endpoints in the background, so a
// network rm right after docker rm -f may still see them, as a user would.
func (s *single) removeNetworks(t *testing.T, names ...string) {
	t.Helper()
	removeNetworks(t, s.Host, names...)
}

// removeNetworks is the same for any test host.
//
// Docker 20.10's libnetwork can lose count of a network's endpoints when
// containers start concurrently (its endpoint counter is updated by
// compare-and-set on a shared object, and a retry counts twice): the network
// then refuses removal with no container left, until dockerd restarts and
// recounts. That is what an operator does, and what this does, loudly.
func removeNetworks(t *testing.T, h *testbed.Host, names ...string) {
	t.Helper()
	for _, n := range names {
		var out string
		var err error
		var staleSince time.Time
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
			if out, err = h.Docker("network", "rm", n); err == nil {
				break
			}
			left, _ := h.Docker("network", "inspect", "-f", "{{len .Containers}}", n)
			if !strings.Contains(out, "has active endpoints") || left != "0" {
				staleSince = time.Time{}
				continue
			}
			if staleSince.IsZero() {
				staleSince = time.Now()
			}
			if time.Since(staleSince) > 15*time.Second {
				t.Logf("%s: Docker lost count of %s's endpoints (no container left, removal refused): restarting dockerd, which recounts them", h.Name, n)
				h.Restart(t)
				out, err = h.Docker("network", "rm", n)
				break
			}
		}
		if err != nil {
			t.Fatalf("docker network rm %s on %s: %v\n%s", n, h.Name, err, out)
		}
	}
}

// kernelClean checks that no tartan link or route is left on the host.
func (s *single) kernelClean(t *testing.T) {
	t.Helper()
	testbed.Eventually(t, 20*time.Second, "no tartan links or routes left on "+s.Name, func() error {
		links := s.MustIP(t, "-br", "link")
		for _, l := range strings.Split(links, "\n") {
			f := strings.Fields(l)
			if len(f) > 0 && (strings.HasPrefix(f[0], "tn") || strings.HasPrefix(f[0], "tp") || strings.HasPrefix(f[0], "tartan.")) {
				return fmt.Errorf("link left: %s", l)
			}
		}
		for _, proto := range []string{"84", "85"} { // tartan's routes, its pools' guard routes
			for _, family := range []string{"-4", "-6"} {
				if r := strings.TrimSpace(s.MustIP(t, family, "route", "show", "proto", proto)); r != "" {
					return fmt.Errorf("routes left: %s", r)
				}
			}
		}
		return nil
	})
}

func mustFail(t *testing.T, out string, err error, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("want a failure saying %q, got success:\n%s", words, out)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error does not say %q:\n%v", w, err)
		}
	}
}

const tnet = "-d=tartan:latest"
const tipam = "--ipam-driver=tartan:latest"

// hostOwnKey says whether a store key is a host's own (its record, its
// liveness renewals, its identity claim) rather than a network's: those
// stay while the host runs the plugin, networks or not.
func hostOwnKey(k string) bool {
	for _, p := range []string{"tartan/hosts/", "tartan/renewals/", "tartan/identity/"} {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// buildStatic builds the e2e tool of that name (e2e/<name>) as a static
// binary, which runs inside the test image's containers (docker cp).
func buildStatic(t *testing.T, name string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), name)
	cmd := exec.Command("go", "build", "-o", bin, filepath.Join(testbed.RepoRoot(t), "e2e", name))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building e2e/%s: %v\n%s", name, err, out)
	}
	return bin
}
