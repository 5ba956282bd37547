package kv_test

import (
	"context"
	"testing"
	"time"

	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
)

// Census: hosts from their records and their blocks, alive by the shared
// rule; a block whose host has no record still shows, as an unknown host.
func TestCensus(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, st := range kvtest.Stores(consulAddr) {
		t.Run(st.Name, func(t *testing.T) {
			s := st.Make(t)
			put := func(key string, v any) {
				t.Helper()
				if _, err := kv.PutJSON(ctx, s, key, v, kv.Any); err != nil {
					t.Fatal(err)
				}
			}
			put(kv.HostPath("h2"), kv.Host{ID: "h2", Address: "10.0.0.2", Version: "v2", Renewed: now.Add(-2 * time.Hour)})
			put(kv.HostPath("h1"), kv.Host{ID: "h1", Address: "10.0.0.1", Version: "v1", Renewed: now.Add(-48 * time.Hour)})
			put(kv.RenewalPath("h1"), kv.Renewal{Renewed: now.Add(-time.Minute)})
			put(kv.BlockPath("10.1.0.0/16", "10.1.0.64/26"), kv.Block{CIDR: "10.1.0.64/26", Pool: "10.1.0.0/16", Host: "h1", Expires: now.Add(time.Hour)})
			put(kv.BlockPath("10.1.0.0/16", "10.1.0.0/26"), kv.Block{CIDR: "10.1.0.0/26", Pool: "10.1.0.0/16", Host: "h1", Expires: now.Add(-time.Hour)})
			put(kv.BlockPath("10.1.0.0/16", "10.1.0.128/26"), kv.Block{CIDR: "10.1.0.128/26", Pool: "10.1.0.0/16", Host: "gone", Expires: now.Add(-time.Hour)})
			got, err := kv.Census(ctx, s, now, time.Hour, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 3 || got[0].ID != "gone" || got[1].ID != "h1" || got[2].ID != "h2" {
				t.Fatalf("hosts %+v", got)
			}
			gone, h1, h2 := got[0], got[1], got[2]
			if gone.Known || gone.Alive || len(gone.Blocks) != 1 || gone.Blocks[0].Alive {
				t.Errorf("a block's unknown host: %+v", gone)
			}
			if !h1.Known || !h1.Alive || !h1.Renewed.Equal(now.Add(-time.Minute)) || h1.Address != "10.0.0.1" || h1.Version != "v1" {
				t.Errorf("h1 (renewed a minute ago under renewals/): %+v", h1)
			}
			if len(h1.Blocks) != 2 || h1.Blocks[0].Block != "10.1.0.0/26" || !h1.Blocks[0].Alive || h1.Blocks[1].Block != "10.1.0.64/26" {
				t.Errorf("h1's blocks (an expired lease of a live host still counts): %+v", h1.Blocks)
			}
			if !h2.Known || h2.Alive || len(h2.Blocks) != 0 {
				t.Errorf("h2 (renewed two hours ago, lease one hour): %+v", h2)
			}
		})
	}
}
