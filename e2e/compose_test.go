//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// composeFiles are contrib's compose files as users run them, with an
// override that only swaps the images for the test image (the machine has no
// registry): the networks, ports and replicas are the files' own.
const composeOverride = `services:
  web:
    image: tbox
    command: sh -c 'mkdir -p /www && echo hello from $$(hostname) > /www/index.html && httpd -f -p 80 -h /www'
  client:
    image: tbox
`

// compose runs Debian's docker compose v2 CLI plugin (make compose) against
// the host's daemon, as "docker compose".
func (s *single) compose(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	bin := os.Getenv("COMPOSE_BIN")
	if _, err := os.Stat(bin); err != nil {
		testkit.Require(t, false, "no docker compose plugin (make compose, COMPOSE_BIN)")
	}
	cfg := filepath.Join(t.TempDir(), "docker-config")
	if err := os.MkdirAll(filepath.Join(cfg, "cli-plugins"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(bin, filepath.Join(cfg, "cli-plugins", "docker-compose")); err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", append([]string{"compose"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(s.Env(), "DOCKER_CONFIG="+cfg)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker compose %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// contrib/compose.yaml and contrib/stack.yaml with docker compose v2: the
// network is made by compose through both drivers, the services reach each
// other by name, the published port answers from outside, and down leaves
// nothing of tartan's behind.
func TestCompose(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "dc1", 12)
	s.InstallPlugin(t)
	dir := t.TempDir()
	for _, f := range []string{"compose.yaml", "stack.yaml"} {
		b, err := os.ReadFile(filepath.Join(testbed.RepoRoot(t), "contrib", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "override.yaml"), []byte(composeOverride), 0o644); err != nil {
		t.Fatal(err)
	}
	v, _ := s.compose(t, dir, "version")
	t.Logf("%s with Docker %d", strings.TrimSpace(v), s.EngineMajor(t))

	up := func(project string, files ...string) {
		t.Helper()
		args := []string{"-p", project}
		for _, f := range files {
			args = append(args, "-f", f)
		}
		if out, err := s.compose(t, dir, append(args, "up", "-d", "--pull", "never")...); err != nil {
			t.Fatal(err)
		} else {
			t.Logf("compose up %s:\n%s", project, out)
		}
	}
	down := func(project string, files ...string) {
		t.Helper()
		args := []string{"-p", project}
		for _, f := range files {
			args = append(args, "-f", f)
		}
		if _, err := s.compose(t, dir, append(args, "down", "-t", "1")...); err != nil {
			t.Fatal(err)
		}
	}
	clientsSayOK := func(project string, replicas int) {
		t.Helper()
		testbed.Eventually(t, 60*time.Second, project+"'s clients reach web by name", func() error {
			for i := 1; i <= replicas; i++ {
				logs, err := s.Docker("logs", fmt.Sprintf("%s-client-%d", project, i))
				if err != nil || !strings.Contains(logs, "ok") {
					return fmt.Errorf("client %d: %q %v", i, logs, err)
				}
			}
			return nil
		})
	}

	// compose.yaml: the network is compose's, on tartan's drivers.
	up("app", "compose.yaml", "override.yaml")
	if d := s.MustDocker(t, "network", "inspect", "-f", "{{.Driver}} {{.IPAM.Driver}} {{range .IPAM.Config}}{{.Subnet}}{{end}}", "app_app"); d != testbed.PluginName+" "+testbed.PluginName+" 10.244.0.0/16" {
		t.Fatalf("app_app: %s", d)
	}
	if ip := s.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "app-web-1"); !strings.HasPrefix(ip, "10.244.") {
		t.Fatalf("web's address %q is not in the compose file's subnet", ip)
	}
	clientsSayOK("app", 1)
	testbed.Eventually(t, 20*time.Second, "web's published port 8080 answers from outside", func() error {
		out, err := s.outside.Exec("curl", "-s", "-m", "2", "http://10.99.12.2:8080/")
		if err != nil || !strings.Contains(out, "hello from") {
			return fmt.Errorf("%q %v", out, err)
		}
		return nil
	})
	down("app", "compose.yaml", "override.yaml")
	if ls := s.MustDocker(t, "network", "ls", "-q", "-f", "name=app_app"); ls != "" {
		t.Fatalf("compose down left network %s", ls)
	}
	s.kernelClean(t)

	// stack.yaml outside swarm: its external network made as a local tartan
	// network, three replicas of each service.
	s.MustDocker(t, "network", "create", tnet, tipam, "-o", "tartan.backend=vxlan", "--subnet", "10.86.0.0/16", "tartan-swarm")
	up("stack", "stack.yaml", "override.yaml")
	clientsSayOK("stack", 3)
	web := map[string]bool{}
	for i := 1; i <= 3; i++ {
		ip := s.MustDocker(t, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", fmt.Sprintf("stack-web-%d", i))
		if !strings.HasPrefix(ip, "10.86.") || web[ip] {
			t.Fatalf("web replica %d has address %q (others %v)", i, ip, web)
		}
		web[ip] = true
	}
	down("stack", "stack.yaml", "override.yaml")
	s.removeNetworks(t, "tartan-swarm")
	s.kernelClean(t)
}
