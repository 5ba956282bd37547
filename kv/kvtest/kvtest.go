// Package kvtest gives tests the three stores of the kv contract: memory,
// bbolt and a real Consul, each fresh for the test that asks.
package kvtest

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/kv"
)

// Store is one kind of store and how a test gets a fresh one.
type Store struct {
	Name string
	Make func(t *testing.T) kv.Store
}

// Stores are memory, bbolt (in the test's temporary folder) and Consul at
// consulAddr, under a prefix of the test's own. Without a Consul server
// (consulAddr "") the Consul runs fail in CI and skip loudly elsewhere.
func Stores(consulAddr string) []Store {
	return []Store{
		{"memory", func(*testing.T) kv.Store { return kv.NewMemory() }},
		{"bolt", func(t *testing.T) kv.Store {
			s, err := kv.OpenBolt(filepath.Join(t.TempDir(), "t.db"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}},
		{"consul", func(t *testing.T) kv.Store { return Consul(t, consulAddr) }},
	}
}

// Consul is a store on the Consul server at addr, under a prefix that no
// other test uses.
func Consul(t *testing.T, addr string) kv.Store {
	t.Helper()
	testkit.Require(t, addr != "", "no consul server (run make consul, or set CONSUL_BIN)")
	prefix := fmt.Sprintf("test/%s-%d/", strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano())
	s, err := kv.NewConsul(kv.ConsulConfig{Addresses: []string{addr}, Scheme: "http", Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
