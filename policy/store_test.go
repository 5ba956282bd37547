package policy

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/internal/testkit"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
)

var consulAddr string

func TestMain(m *testing.M) { os.Exit(testkit.MainWithConsul(m, 18700, &consulAddr)) }

// TestStore: apply, get, load, replace and remove on every store (memory,
// bolt, a real Consul); a bad record is skipped by name and the others
// still load; an apply that cannot be written whole writes nothing.
func TestStore(t *testing.T) {
	for _, st := range kvtest.Stores(consulAddr) {
		t.Run(st.Name, func(t *testing.T) {
			ctx := context.Background()
			s := st.Make(t)
			ps, err := Parse([]byte(example))
			if err != nil {
				t.Fatal(err)
			}
			if err := Apply(ctx, s, ps); err != nil {
				t.Fatal(err)
			}
			got, err := Get(ctx, s, "api")
			if err != nil || got.Ingress[0].Ports[1].Port != (PortRange{First: 8000, Last: 8080}) || got.Selector.Labels["app"] != "api" {
				t.Fatalf("get api: %+v %v", got, err)
			}
			// A record written by hand that does not validate, one that
			// does not decode, and one under another name's key.
			for key, val := range map[string]string{
				kv.PolicyPath("broken"):  `{"name":"broken","selector":{},"ingress":[{"from":[{"cidr":"10.0.0.0/33"}]}]}`,
				kv.PolicyPath("garbage"): `{not json`,
				kv.PolicyPath("alias"):   `{"name":"api","selector":{}}`,
				kv.PolicyPath("unknown"): `{"name":"unknown","selector":{},"future":true}`,
			} {
				if _, err := s.Put(ctx, key, []byte(val), kv.Any); err != nil {
					t.Fatal(err)
				}
			}
			var skipped []string
			all, _, err := Load(ctx, s, func(key string, err error) { skipped = append(skipped, key+": "+err.Error()) })
			if err != nil || len(all) != 2 || all[0].Name != "api" || all[1].Name != "web-out" {
				t.Fatalf("load: %+v %v", all, err)
			}
			if len(skipped) != 4 || !strings.Contains(strings.Join(skipped, "\n"), "is not a CIDR") {
				t.Fatalf("skipped: %v", skipped)
			}
			// Replace: the same name, new rules.
			repl, err := Parse([]byte("name: api\nselector: {labels: {app: api}}\ningress: [{ports: [{port: 443}]}]"))
			if err != nil {
				t.Fatal(err)
			}
			if err := Apply(ctx, s, repl); err != nil {
				t.Fatal(err)
			}
			if got, err := Get(ctx, s, "api"); err != nil || len(got.Ingress) != 1 || got.Ingress[0].Ports[0].Port != (PortRange{First: 443, Last: 443}) || len(got.Egress) != 0 {
				t.Fatalf("replaced api: %+v %v", got, err)
			}
			if err := Remove(ctx, s, "api"); err != nil {
				t.Fatal(err)
			}
			if _, err := Get(ctx, s, "api"); !errors.Is(err, ErrNoPolicy) {
				t.Fatalf("get a removed policy: %v", err)
			}
			if err := Remove(ctx, s, "api"); !errors.Is(err, ErrNoPolicy) || !strings.Contains(err.Error(), "tartan policy ls") {
				t.Fatalf("remove a missing policy: %v", err)
			}
			// All or none: an invalid policy among valid ones writes none.
			bad := append(repl, Policy{Name: "x", Ingress: []Rule{{From: []Peer{{CIDR: "bad"}}}}})
			bad[0].Name = "fresh"
			if err := Apply(ctx, s, bad); err == nil {
				t.Fatal("an invalid policy was applied")
			}
			if _, err := Get(ctx, s, "fresh"); !errors.Is(err, ErrNoPolicy) {
				t.Fatalf("half an apply landed: %v", err)
			}
		})
	}
}
