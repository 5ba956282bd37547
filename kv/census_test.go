package kv_test

import (
	"context"
	"testing"
	"time"

	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
)

// Census: hosts from their records and their blocks, alive by the shared
// rule as one witness saw them over two hours; a block whose host has no
// record still shows, as an unknown host. What the hosts wrote into their
// records (a clock days behind, here) decides nothing.
func TestCensus(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	skewed := now.Add(-72 * time.Hour) // h1's clock is three days behind
	for _, st := range kvtest.Stores(consulAddr) {
		t.Run(st.Name, func(t *testing.T) {
			s := st.Make(t)
			put := func(key string, v any) {
				t.Helper()
				if _, err := kv.PutJSON(ctx, s, key, v, kv.Any); err != nil {
					t.Fatal(err)
				}
			}
			put(kv.HostPath("h2"), kv.Host{ID: "h2", Address: "10.0.0.2", Version: "v2", Renewed: now})
			put(kv.HostPath("h1"), kv.Host{ID: "h1", Address: "10.0.0.1", Version: "v1", Renewed: skewed})
			put(kv.RenewalPath("h1"), kv.Renewal{Renewed: skewed})
			put(kv.BlockPath("10.1.0.0/16", "10.1.0.64/26"), kv.Block{CIDR: "10.1.0.64/26", Pool: "10.1.0.0/16", Host: "h1", Expires: skewed.Add(time.Hour)})
			put(kv.BlockPath("10.1.0.0/16", "10.1.0.0/26"), kv.Block{CIDR: "10.1.0.0/26", Pool: "10.1.0.0/16", Host: "h1", Expires: skewed.Add(-time.Hour)})
			put(kv.BlockPath("10.1.0.0/16", "10.1.0.128/26"), kv.Block{CIDR: "10.1.0.128/26", Pool: "10.1.0.0/16", Host: "gone", Expires: now.Add(time.Hour)})
			w := kv.NewWitness()
			// First sight: everything counts as just seen.
			got, err := kv.Census(ctx, s, w, now, time.Hour, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 || !got[1].Alive || !got[2].Alive || !got[0].Blocks[0].Alive {
				t.Fatalf("first sight: %+v", got)
			}
			// Two hours on: h1 renewed (by its skewed clock), h2 did not.
			put(kv.RenewalPath("h1"), kv.Renewal{Renewed: skewed.Add(2 * time.Hour)})
			later := now.Add(2 * time.Hour)
			got, err = kv.Census(ctx, s, w, later, time.Hour, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 || got[0].ID != "gone" || got[1].ID != "h1" || got[2].ID != "h2" {
				t.Fatalf("hosts %+v", got)
			}
			gone, h1, h2 := got[0], got[1], got[2]
			if gone.Known || gone.Alive || len(gone.Blocks) != 1 || gone.Blocks[0].Alive {
				t.Errorf("a block's unknown host, its lease not renewed for two hours: %+v", gone)
			}
			if !h1.Known || !h1.Alive || !h1.Seen.Equal(later) || !h1.Renewed.Equal(skewed.Add(2*time.Hour)) || h1.Address != "10.0.0.1" || h1.Version != "v1" {
				t.Errorf("h1 (renewed just now, by a clock three days behind): %+v", h1)
			}
			if len(h1.Blocks) != 2 || h1.Blocks[0].Block != "10.1.0.0/26" || !h1.Blocks[0].Alive || h1.Blocks[1].Block != "10.1.0.64/26" {
				t.Errorf("h1's blocks (a lease not renewed of a live host still counts): %+v", h1.Blocks)
			}
			if !h2.Known || h2.Alive || !h2.Seen.Equal(now) || len(h2.Blocks) != 0 {
				t.Errorf("h2 (not renewed for two hours, lease one hour): %+v", h2)
			}
		})
	}
}
