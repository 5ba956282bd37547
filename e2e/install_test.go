//go:build e2e

package e2e

import (
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// The way most users get the plugin: make push publishes it to a registry,
// docker plugin install fetches it with a STORE setting, and the quick start
// works against Consul.
func TestInstallFromRegistry(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "i1", 5)
	reg := testbed.StartRegistry(t, s.NS, "127.0.0.1")
	consul := testkit.StartConsul(t, &s.NS, "127.0.0.1", 8500)
	s.Make(t, "push", "BUILD="+filepath.Join(s.Dir, "build"), "REGISTRY="+reg, "TAG=e2e")
	ref := reg + "/tartan:e2e"
	// What docker plugin install asks the user to grant (the privileges
	// it lists before installing): the eBPF fast path's CAP_BPF among them.
	privs, err := exec.Command("curl", "-sf", "--unix-socket", s.Socket, "http://localhost/plugins/privileges?remote="+url.QueryEscape(ref)).CombinedOutput()
	if err != nil || !strings.Contains(string(privs), `"CAP_NET_ADMIN"`) || !strings.Contains(string(privs), `"CAP_BPF"`) || !strings.Contains(string(privs), `"/dev/net/tun"`) {
		t.Fatalf("privileges docker plugin install shows: %v %s", err, privs)
	}
	t.Logf("docker plugin install asks for: %s", privs)
	s.MustDocker(t, append([]string{"plugin", "install", "--grant-all-permissions", ref, "STORE=consul://127.0.0.1:8500/installed"}, s.Mounts(t)...)...)
	if env := s.MustDocker(t, "plugin", "inspect", "-f", "{{.Settings.Env}}", ref); !strings.Contains(env, "STORE=consul://127.0.0.1:8500/installed") {
		t.Fatalf("setting not applied: %s", env)
	}
	s.MustDocker(t, "network", "create", "-d", ref, "--ipam-driver", ref, "-o", "tartan.backend=vxlan", "--subnet", "10.244.0.0/16", "web")
	s.daemon(t, "web1", "web")
	s.mustReach(t, "web", "web1")
	if keys := strings.Join(consul.Keys(t, "installed/"), " "); !strings.Contains(keys, "installed/pools/10.244.0.0-16") {
		t.Fatalf("the installed plugin does not use Consul: %s", keys)
	}
	s.MustDocker(t, "rm", "-f", "web1")
	s.removeNetworks(t, "web")
	s.MustDocker(t, "plugin", "disable", ref)
	s.MustDocker(t, "plugin", "rm", ref)
	s.kernelClean(t)
}

// docker plugin upgrade (issue 9): a running container keeps its
// connectivity (a continuous ping loses at most 1 s), the network keeps
// working, and the new version adopts the old one's state. Before the state
// moved to a host folder, the new version started with an empty store.
func TestUpgrade(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "u1", 8)
	reg := testbed.StartRegistry(t, s.NS, "127.0.0.1")
	build := "BUILD=" + filepath.Join(s.Dir, "build")
	s.Make(t, "push", build, "REGISTRY="+reg, "TAG=v1", "VERSION=e2e-v1")
	s.Make(t, "push", build, "REGISTRY="+reg, "TAG=v2", "VERSION=e2e-v2")
	ref := reg + "/tartan:v1"
	s.MustDocker(t, append([]string{"plugin", "install", "--grant-all-permissions", ref}, s.Mounts(t)...)...)
	s.MustDocker(t, "network", "create", "-d", ref, "--ipam-driver", ref, "--subnet", "10.94.0.0/24", "up")
	srv := s.daemon(t, "srv", "up")
	const count = 150
	startPinger(t, s.Host, "pinger", "up", srv, count)
	time.Sleep(2 * time.Second)
	s.MustDocker(t, "plugin", "disable", "-f", ref)
	s.MustDocker(t, "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", ref, reg+"/tartan:v2")
	// Docker resets mount sources on upgrade: the test host's (a real host
	// has the defaults, /var/run/docker.sock and /var/lib).
	s.MustDocker(t, append([]string{"plugin", "set", ref}, s.Mounts(t)...)...)
	s.MustDocker(t, "plugin", "enable", ref)
	if got := s.MustDocker(t, "plugin", "inspect", "-f", "{{.PluginReference}}", ref); !strings.Contains(got, "tartan:v2") {
		t.Fatalf("plugin reference after the upgrade: %s", got)
	}
	testbed.Eventually(t, 30*time.Second, "the upgraded plugin serves", func() error {
		_, err := s.Docker("run", "--rm", "--network", "up", "tbox", "ping", "-c", "1", "-W", "1", srv)
		return err
	})
	if lost := pingLoss(t, s.Host, "pinger", count); lost > 1 {
		t.Fatalf("the upgrade cut a running container off for %.1f s (at most 1 s allowed):\n%s", lost, s.MustDocker(t, "logs", "--tail", "5", "pinger"))
	}
	if !strings.Contains(s.PluginLog(), "version=e2e-v2") {
		t.Fatal("the upgraded plugin does not report version e2e-v2")
	}
	s.MustDocker(t, "rm", "-f", "srv", "pinger")
	s.removeNetworks(t, "up")
	s.MustDocker(t, "plugin", "disable", ref)
	s.MustDocker(t, "plugin", "rm", ref)
	s.kernelClean(t)
}
