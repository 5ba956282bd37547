package driver

import (
	"slices"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/macvlan"
	"github.com/tartan-net/tartan/driver/vxlan"
)

// TestStaleEndpoints: records of networks this host no longer has are
// dropped at once; records whose veth is gone are dropped once it has been
// gone for the grace period; busy and macvlan endpoints are left alone
// (macvlan.Backend.CheckEndpoint never reports its endpoints gone or
// unjoined: TestMacvlanEndpointsNeverStale).
// Before the fix Reconcile kept every such record forever and logged
// it at every RESYNC (there was no decision to test: nothing was dropped).
func TestStaleEndpoints(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	nets := map[string]localNetwork{
		"vx": {ID: "vx", Backend: vxlan.Name},
		"mv": {ID: "mv", Backend: macvlan.Name},
	}
	eps := map[string]localEndpoint{
		"orphan":      {ID: "orphan", Network: "deleted"},      // network gone
		"orphan-busy": {ID: "orphan-busy", Network: "deleted"}, // network gone, call in flight
		"live":        {ID: "live", Network: "vx"},             // veth present
		"gone":        {ID: "gone", Network: "vx"},             // veth missing
		"gone-busy":   {ID: "gone-busy", Network: "vx"},        // veth missing, call in flight
		"macvlan":     {ID: "macvlan", Network: "mv"},          // its link is in the container
	}
	in := staleInput{Endpoints: eps, Networks: nets, Busy: map[string]bool{"orphan-busy": true, "gone-busy": true},
		VethGone: map[string]bool{"gone": true, "gone-busy": true}, Now: t0, Grace: 2 * time.Minute}

	// First pass: the orphan goes at once, the missing veth starts its clock.
	r := staleEndpoints(in)
	if !slices.Equal(r.Drop, []string{"orphan"}) {
		t.Fatalf("first pass drops %v, want [orphan]", r.Drop)
	}
	if len(r.Missing) != 1 || !r.Missing["gone"].Equal(t0) {
		t.Fatalf("first pass remembers %v, want gone since %s", r.Missing, t0)
	}

	// Within the grace period nothing more goes, and the clock is not reset.
	in.Missing, in.Now = r.Missing, t0.Add(time.Minute)
	r = staleEndpoints(in)
	if !slices.Equal(r.Drop, []string{"orphan"}) || !r.Missing["gone"].Equal(t0) {
		t.Fatalf("within grace: drop %v, missing %v", r.Drop, r.Missing)
	}

	// A veth that comes back forgets its clock.
	in.VethGone = map[string]bool{"gone-busy": true}
	if r2 := staleEndpoints(in); len(r2.Missing) != 0 {
		t.Fatalf("veth back, still remembered: %v", r2.Missing)
	}
	in.VethGone = map[string]bool{"gone": true, "gone-busy": true}

	// After the grace period the record goes; busy and macvlan ones stay.
	in.Missing, in.Now = r.Missing, t0.Add(2*time.Minute)
	r = staleEndpoints(in)
	if !slices.Equal(r.Drop, []string{"gone", "orphan"}) || len(r.Missing) != 0 {
		t.Fatalf("after grace: drop %v, missing %v", r.Drop, r.Missing)
	}

	// With no grace, a missing veth's record goes at first sight.
	in.Missing, in.Grace = nil, 0
	if r = staleEndpoints(in); !slices.Equal(r.Drop, []string{"gone", "orphan"}) {
		t.Fatalf("no grace: drop %v", r.Drop)
	}
}

// An endpoint whose veth is here but in no container (the plugin was killed
// before its CreateEndpoint reply reached Docker, which gave the start up
// and could not delete the endpoint) is dropped after JoinGrace, not
// before; its clock stops when a container takes the veth.
func TestStaleUnjoinedEndpoints(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	in := staleInput{
		Networks:  map[string]localNetwork{"vx": {ID: "vx", Backend: vxlan.Name}, "mv": {ID: "mv", Backend: macvlan.Name}},
		Endpoints: map[string]localEndpoint{"half": {ID: "half", Network: "vx"}, "joined": {ID: "joined", Network: "vx"}, "mac": {ID: "mac", Network: "mv"}, "busy": {ID: "busy", Network: "vx"}},
		Unjoined:  map[string]bool{"half": true, "busy": true},
		Busy:      map[string]bool{"busy": true},
		Now:       t0, Grace: 4 * time.Second, JoinGrace: time.Minute,
	}
	r := staleEndpoints(in)
	if len(r.Drop) != 0 || len(r.Missing) != 1 || !r.Missing["half"].Equal(t0) {
		t.Fatalf("first pass: drop %v, missing %v", r.Drop, r.Missing)
	}
	in.Missing, in.Now = r.Missing, t0.Add(30*time.Second) // past Grace, within JoinGrace
	if r = staleEndpoints(in); len(r.Drop) != 0 {
		t.Fatalf("dropped %v within JoinGrace", r.Drop)
	}
	// Joined meanwhile: the clock is forgotten.
	in.Unjoined = map[string]bool{"busy": true}
	if r2 := staleEndpoints(in); len(r2.Missing) != 0 {
		t.Fatalf("joined, still remembered: %v", r2.Missing)
	}
	in.Unjoined = map[string]bool{"half": true, "busy": true}
	in.Missing, in.Now = r.Missing, t0.Add(time.Minute)
	if r = staleEndpoints(in); !slices.Equal(r.Drop, []string{"half"}) {
		t.Fatalf("after JoinGrace: drop %v, want [half]", r.Drop)
	}
}
