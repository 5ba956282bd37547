//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// Consul reports a write its ACLs refuse as a failed
// transaction, and tartan took every failed transaction for a lost
// compare-and-set: 100 rounds of retries, then "changed concurrently" once
// the request's 8 s were spent (it failed before the fix: slow, and naming
// contention instead of the token). With ACLs on (deny by default):
//   - a token that may only read: docker network create fails, naming the
//     store, "permission denied" and the setting to fix (not contention),
//     and leaves nothing behind;
//   - a token Consul does not know: refused the same way;
//   - a token that may write: the same command works, a container starts
//     and reaches another, and everything goes away again.
func TestConsulDenied(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "acl", 2)
	const mgmt = "8d0c5a4e-1a43-4c7e-9d1e-6f1f3f7f0a01"
	consul := testkit.StartConsulACL(t, &s.NS, "127.0.0.1", 8500, mgmt)
	token := func(name, rules string) string {
		t.Helper()
		if out, err := consul.CLI("acl", "policy", "create", "-name", name, "-rules", rules); err != nil {
			t.Fatalf("policy %s: %v %s", name, err, out)
		}
		out, err := consul.CLI("acl", "token", "create", "-policy-name", name, "-format", "json")
		if err != nil {
			t.Fatalf("token %s: %v %s", name, err, out)
		}
		var tok struct{ SecretID string }
		if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.SecretID == "" {
			t.Fatalf("token %s: %v %s", name, err, out)
		}
		return tok.SecretID
	}
	read := token("tartan-read", `key_prefix "tartan/" { policy = "read" }`)
	// What tartan's token needs: its prefix, and sessions for the identity
	// claim (plugin.Identity).
	write := token("tartan-write", `key_prefix "tartan/" { policy = "write" }
session_prefix "" { policy = "write" }`)

	create := []string{"network", "create", tnet, tipam, "--subnet", "10.46.0.0/16", "acl"}
	refused := func(what string) {
		t.Helper()
		start := time.Now()
		out, err := s.Docker(create...)
		took := time.Since(start)
		mustFail(t, out, err, "permission denied", "consul at http://127.0.0.1:8500", "CONSUL_HTTP_TOKEN")
		// The words, not the time, tell a refusal from contention:
		// retried as contention, it ended "changed concurrently".
		t.Logf("%s: refused after %s: %s", what, took.Round(time.Millisecond), strings.SplitN(err.Error(), "\n", 2)[0])
		if strings.Contains(err.Error(), "concurrently") {
			t.Fatalf("%s: the refusal was retried as contention: %v", what, err)
		}
		if out, _ := s.Docker("network", "ls", "-q", "-f", "name=^acl$"); strings.TrimSpace(out) != "" {
			t.Fatalf("%s: the refused network exists: %s", what, out)
		}
		if keys := consul.Keys(t, "tartan/pools/"); len(keys) != 0 {
			t.Fatalf("%s: a pool record was written: %v", what, keys)
		}
	}

	s.InstallPlugin(t, "STORE=consul://127.0.0.1:8500", "CONSUL_HTTP_TOKEN="+read)
	refused("read-only token")

	setToken := func(tok string) {
		t.Helper()
		s.MustDocker(t, "plugin", "disable", "-f", "tartan:latest")
		s.MustDocker(t, "plugin", "set", "tartan:latest", "CONSUL_HTTP_TOKEN="+tok)
		s.MustDocker(t, "plugin", "enable", "tartan:latest")
		s.WaitPlugin(t)
	}
	setToken("5b1f0d7e-0000-4000-8000-000000000000")
	refused("unknown token")

	setToken(write)
	s.MustDocker(t, create...)
	s.daemon(t, "acl1", "acl")
	s.mustReach(t, "acl", "acl1")
	s.MustDocker(t, "rm", "-f", "acl1")
	s.removeNetworks(t, "acl")
	testbed.Eventually(t, 20*time.Second, "nothing of the network left in the store", func() error {
		for _, k := range consul.Keys(t, "tartan/") {
			if strings.Contains(k, "10.46.") {
				return fmt.Errorf("left: %s", k)
			}
		}
		return nil
	})
}
