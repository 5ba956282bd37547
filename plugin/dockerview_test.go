package plugin

import (
	"strings"
	"testing"

	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/plugin/clusternet"
)

// TestDockerDrift: doctor's comparison of Docker's view with the records
// finds each kind of disagreement once, says nothing when they agree, and
// leaves swarm networks with no container here alone.
func TestDockerDrift(t *testing.T) {
	nets := []driver.NetworkStatus{{ID: "n1", Pool: "10.1.0.0/16", Endpoints: 3}, {ID: "n2", Pool: "10.2.0.0/16"}, {ID: "n3", Pool: "10.3.0.0/16", Endpoints: 1}}
	eps := []backend.Endpoint{
		{ID: "e1", Network: "n1", IP: "10.1.0.2"},
		{ID: "e2", Network: "n1", IP: "10.1.0.3", IP6: "fd00::3"},
		{ID: "e3", Network: "n1", IP: "10.1.0.4"},
		{ID: "e9", Network: "n3", IP: "10.3.0.9"},
	}
	healthy := []clusternet.NetworkView{
		{ID: "n1", Name: "one", Scope: "local", Endpoints: []clusternet.EndpointView{
			{ID: "e1", Container: "a", IPv4: "10.1.0.2/32"}, {ID: "e2", Container: "b", IPv4: "10.1.0.3/32", IPv6: "fd00::3/128"}, {ID: "e3", Container: "c", IPv4: "10.1.0.4/32"}}},
		{ID: "n2", Name: "two", Scope: "local"},
		{ID: "n3", Name: "three", Scope: "local", Endpoints: []clusternet.EndpointView{{ID: "e9", Container: "z", IPv4: "10.3.0.9/32"}}},
		{ID: "s1", Name: "svc", Scope: "swarm"}, // no task here: not made on this node yet
	}
	if got := dockerDrift(healthy, nets, eps); len(got) != 0 {
		t.Fatalf("findings on a healthy host: %+v", got)
	}
	if gone := goneFromDocker(healthy, nets); len(gone) != 0 {
		t.Fatalf("networks to collect on a healthy host: %+v", gone)
	}
	damaged := []clusternet.NetworkView{
		{ID: "n1", Name: "one", Scope: "local", Endpoints: []clusternet.EndpointView{
			{ID: "e1", Container: "a", IPv4: "10.1.0.2/32"}, {ID: "e2", Container: "b", IPv4: "10.1.0.3/32", IPv6: "fd00::4/128"}, {ID: "e4", Container: "d", IPv4: "10.1.0.5/32"}}},
		{ID: "n4", Name: "four", Scope: "local"},
		{ID: "n3", Name: "three", Scope: "local", Endpoints: []clusternet.EndpointView{{ID: "e9", Container: "z", IPv4: "10.3.0.9/32"}}},
	}
	got := dockerDrift(damaged, nets, eps)
	var text []string
	for _, f := range got {
		text = append(text, f.What+" => "+f.Fix)
	}
	all := strings.Join(text, "\n")
	for _, want := range []string{
		"container b on network one: Docker has fd00::4/128, tartan fd00::3",
		"container d on network one (endpoint e4, 10.1.0.5/32) has no endpoint in tartan's records",
		"network four is a tartan network in Docker, but the plugin has no record of it",
		"network n2 (pool 10.2.0.0/16) is in tartan's records, but Docker has no such network here",
		"endpoint e3 (10.1.0.4) is in tartan's records, but Docker has no container with it on network n1",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("no finding %q in:\n%s", want, all)
		}
	}
	if len(got) != 5 {
		t.Errorf("%d findings, want 5:\n%s", len(got), all)
	}
	if gone := goneFromDocker(damaged, nets); len(gone) != 1 || gone[0].ID != "n2" {
		t.Errorf("networks to collect: %+v, want n2 only (n1 and n3 are Docker's)", gone)
	}
	// A network Docker lacks that still has endpoint records is reported,
	// not collected.
	if gone := goneFromDocker(nil, nets); len(gone) != 1 || gone[0].ID != "n2" {
		t.Errorf("with no Docker network at all: %+v, want only the one with no endpoints", gone)
	}
}
