//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// lastRelease is the newest version CHANGELOG.md names a commit for, and
// that commit (it must be in this checkout).
func lastRelease(t *testing.T, root string) (version, commit string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "CHANGELOG.md"))
	if err != nil {
		t.Fatal(err)
	}
	heading := regexp.MustCompile(`^## (v\d+\.\d+\.\d+\S*)`)
	named := regexp.MustCompile(`^Commit: ([0-9a-f]{40})$`)
	for _, l := range strings.Split(string(b), "\n") {
		if m := heading.FindStringSubmatch(l); m != nil {
			version = m[1]
		} else if m := named.FindStringSubmatch(l); m != nil && version != "" {
			commit = m[1]
			break
		}
	}
	if commit == "" {
		t.Fatal("CHANGELOG.md names no released version with its commit")
	}
	_, err = testkit.Run(t.Context(), "git", "-C", root, "cat-file", "-e", commit+"^{commit}")
	testkit.Require(t, err == nil, fmt.Sprintf("release %s's commit %s is not in this checkout (a shallow clone?): fetch it", version, commit))
	return version, commit
}

// buildRelease builds the plugin directory of a release from its commit,
// with that commit's own Makefile, and returns it.
func buildRelease(t *testing.T, root, version, commit string) string {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	testkit.MustRun(t, "sh", "-c", fmt.Sprintf("git -C %q archive --format=tar %s | tar -x -C %q", root, commit, src))
	build := filepath.Join(t.TempDir(), "build")
	testkit.MustRun(t, "make", "-C", src, "plugin-dir", "BUILD="+build, "VERSION="+version)
	return filepath.Join(build, "plugin")
}

// The newest release (built from the commit CHANGELOG.md names for it) is
// installed from a registry on two hosts with Consul; containers on both
// ping each other across hosts while host 1, then host 2, is upgraded to
// this tree's plugin with docker plugin upgrade, and while host 2 is taken
// back to the release (a downgrade): each step loses at most 1 s of either
// ping, and new containers work after each.
func TestUpgradeFromRelease(t *testing.T) {
	t.Parallel()
	testkit.RequireRoot(t, "dockerd", "docker", "nsenter", "ip", "curl", "busybox", "docker-registry", "git", "tar")
	root := testbed.RepoRoot(t)
	version, commit := lastRelease(t, root)
	c := testbed.NewCluster(t, "rel", 1500)
	reg := c.AddRegistry(t)
	h1, h2 := c.AddBareHost(t), c.AddBareHost(t)

	// The release and this tree, published the way make release does.
	old := reg + "/tartan:" + version
	dir := buildRelease(t, root, version, commit)
	h1.MustDocker(t, "plugin", "create", old, dir)
	h1.MustDocker(t, "plugin", "push", old)
	h1.MustDocker(t, "plugin", "rm", old)
	const treeVersion = "v0.0.0-tree"
	h1.Make(t, "push", "BUILD="+filepath.Join(h1.Dir, "build"), "REGISTRY="+reg, "TAG=tree", "VERSION="+treeVersion)
	tree := reg + "/tartan:tree"

	hosts := []*testbed.Host{h1, h2}
	for _, h := range hosts {
		h.MustDocker(t, append(append([]string{"plugin", "install", "--grant-all-permissions", old}, c.Settings()...), h.Mounts(t)...)...)
		h.WaitPluginNamed(t, old)
		h.MustDocker(t, "network", "create", "-d", old, "--ipam-driver", old, "-o", "tartan.backend=vxlan", "--subnet", "10.97.0.0/16", "rel")
	}
	ips := make([]string, 2)
	for i, h := range hosts {
		name := fmt.Sprintf("srv%d", i+1)
		h.MustDocker(t, "run", "-d", "--name", name, "--network", "rel", "tbox", "sleep", "3600")
		ips[i] = h.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
	}
	testbed.Eventually(t, testbed.MinWait, "the release's containers reach each other across hosts", func() error {
		_, err := h1.Docker("exec", "srv1", "ping", "-c", "1", "-W", "1", ips[1])
		return err
	})

	step := 0
	change := func(h *testbed.Host, to, want string) {
		t.Helper()
		step++
		pingers := []struct {
			h      *testbed.Host
			name   string
			target string
		}{{h1, fmt.Sprintf("p1-%d", step), ips[1]}, {h2, fmt.Sprintf("p2-%d", step), ips[0]}}
		for _, p := range pingers {
			startPinger(t, p.h, p.name, "rel", p.target, 1000000)
		}
		testbed.Eventually(t, testbed.MinWait, "the pingers answered", func() error {
			for _, p := range pingers {
				if logs, _ := p.h.Docker("logs", p.name); !strings.Contains(logs, "seq=") {
					return fmt.Errorf("%s: no answer yet", p.name)
				}
			}
			return nil
		})
		logged := len(h.PluginLog())
		h.MustDocker(t, "plugin", "disable", "-f", old)
		h.MustDocker(t, "plugin", "upgrade", "--grant-all-permissions", "--skip-remote-check", old, to)
		// Docker resets mount sources on upgrade: the test host's again
		// (a real host has the defaults).
		h.MustDocker(t, append([]string{"plugin", "set", old}, h.Mounts(t)...)...)
		h.MustDocker(t, "plugin", "enable", old)
		h.WaitPluginNamed(t, old)
		testbed.Eventually(t, testbed.MinWait, fmt.Sprintf("%s's plugin is %s", h.Name, want), func() error {
			if !strings.Contains(h.PluginLog()[logged:], "version="+want) {
				return fmt.Errorf("its log has no version=%s", want)
			}
			return nil
		})
		// A new container works with the plugin that now serves.
		testbed.Eventually(t, testbed.MinWait, "a new container on "+h.Name+" reaches the other host's", func() error {
			other := ips[0]
			if h == h1 {
				other = ips[1]
			}
			_, err := h.Docker("run", "--rm", "--network", "rel", "tbox", "ping", "-c", "1", "-W", "1", other)
			return err
		})
		for _, p := range pingers {
			p.h.MustDocker(t, "kill", "--signal", "INT", p.name)
			if lost := pingLoss(t, p.h, p.name, 0); lost > 1 {
				t.Fatalf("step %d (%s to %s): %s lost %.1f s of pings (at most 1 s allowed):\n%s", step, h.Name, want, p.name, lost,
					p.h.MustDocker(t, "logs", "--tail", "5", p.name))
			}
			p.h.MustDocker(t, "rm", "-f", p.name)
		}
	}
	change(h1, tree, treeVersion)
	change(h2, tree, treeVersion)
	change(h2, old, version) // back to the release

	for i, h := range hosts {
		h.MustDocker(t, "rm", "-f", fmt.Sprintf("srv%d", i+1))
		removeNetworks(t, h, "rel")
		h.MustDocker(t, "plugin", "disable", old)
		h.MustDocker(t, "plugin", "rm", old)
	}
}
