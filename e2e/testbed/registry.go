package testbed

import (
	"fmt"
	"github.com/tartan-net/tartan/internal/testkit"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// StartRegistry runs Debian's registry (distribution) on addr:5000 inside
// ns, stopped at cleanup, and returns its host:port. Test daemons take any
// registry on the underlay (UnderlayPrefix) or loopback over plain HTTP.
func StartRegistry(t testing.TB, ns testkit.NS, addr string) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	testkit.Require(t, err == nil, "docker-registry is not installed (make deps)")
	dir := t.TempDir()
	hostPort := addr + ":5000"
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), hostPort)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+ns.Path(), bin, "serve", cfg)
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	forget := testkit.RecordProcess(cmd.Process.Pid, "registry "+hostPort)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		logf.Close()
		forget()
	})
	Eventually(t, time.Minute, "registry answers", func() error {
		_, err := ns.Exec("curl", "-sf", "http://"+hostPort+"/v2/")
		return err
	})
	return hostPort
}

// RegistryAddr is where AddRegistry puts a cluster's registry.
const RegistryAddr = UnderlayPrefix + "150"

// AddRegistry runs a registry on the cluster's underlay (RegistryAddr), in
// a namespace of its own, and returns its host:port.
func (c *Cluster) AddRegistry(t testing.TB) string {
	t.Helper()
	ns := testkit.NewNS(t, "tt-"+c.Name+"-reg")
	c.plug(t, ns, "reg", RegistryAddr)
	return StartRegistry(t, ns, RegistryAddr)
}
