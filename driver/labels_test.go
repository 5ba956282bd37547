package driver

import (
	"context"
	"testing"

	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/kv"
)

// TestSyncLabels: the store's label records of a host follow its labelled
// endpoints: a missing one written, a stale one rewritten, one of an
// endpoint the host no longer has removed, an unlabelled endpoint none;
// another host's records are not touched; a second pass changes nothing.
func TestSyncLabels(t *testing.T) {
	ctx := context.Background()
	store := kv.NewMemory()
	d := testDriver("a", store)
	d.st.networks["n1"] = localNetwork{ID: "n1", Pool: "10.64.0.0/24", Backend: vxlan.Name}
	d.st.endpoints["e1"] = localEndpoint{ID: "e1", Network: "n1", IP: "10.64.0.2", Labels: map[string]string{"app": "api"}}
	d.st.endpoints["e2"] = localEndpoint{ID: "e2", Network: "n1", IP: "10.64.0.3", Labels: map[string]string{"app": "web"}}
	d.st.endpoints["e3"] = localEndpoint{ID: "e3", Network: "n1", IP: "10.64.0.4"}
	put := func(key string, rec kv.EndpointLabels) {
		if _, err := kv.PutJSON(ctx, store, key, rec, kv.Any); err != nil {
			t.Fatal(err)
		}
	}
	put(kv.EndpointLabelsPath("a", "e2"), kv.EndpointLabels{IP: "10.64.0.3", Pool: "10.64.0.0/24", Endpoint: "e2", Host: "a", Labels: map[string]string{"app": "old"}})
	put(kv.EndpointLabelsPath("a", "gone"), kv.EndpointLabels{IP: "10.64.0.9", Endpoint: "gone", Host: "a", Labels: map[string]string{"app": "x"}})
	put(kv.EndpointLabelsPath("b", "e9"), kv.EndpointLabels{IP: "10.64.0.70", Endpoint: "e9", Host: "b", Labels: map[string]string{"app": "x"}})
	wrote, removed, err := d.SyncLabels(ctx)
	if err != nil || wrote != 2 || removed != 1 {
		t.Fatalf("sync: wrote %d removed %d, %v; want 2 and 1", wrote, removed, err)
	}
	for key, want := range map[string]string{kv.EndpointLabelsPath("a", "e1"): "api", kv.EndpointLabelsPath("a", "e2"): "web", kv.EndpointLabelsPath("b", "e9"): "x"} {
		var rec kv.EndpointLabels
		if _, err := kv.GetJSON(ctx, store, key, &rec); err != nil || rec.Labels["app"] != want {
			t.Errorf("%s: %+v %v, want app=%s", key, rec, err, want)
		}
	}
	for _, key := range []string{kv.EndpointLabelsPath("a", "gone"), kv.EndpointLabelsPath("a", "e3")} {
		if _, err := store.Get(ctx, key); err == nil {
			t.Errorf("%s is in the store", key)
		}
	}
	var e1 kv.EndpointLabels
	if _, err := kv.GetJSON(ctx, store, kv.EndpointLabelsPath("a", "e1"), &e1); err != nil || e1.Pool != "10.64.0.0/24" || e1.IP != "10.64.0.2" || e1.Host != "a" {
		t.Errorf("e1's record: %+v %v", e1, err)
	}
	if wrote, removed, err := d.SyncLabels(ctx); err != nil || wrote+removed != 0 {
		t.Fatalf("a second pass: wrote %d removed %d, %v", wrote, removed, err)
	}
}
