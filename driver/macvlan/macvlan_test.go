package macvlan

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/tartan-net/tartan/driver/backend"
)

// parentBed replays CreateNetwork and DeleteNetwork's parent decisions for
// macvlan networks over one host's records, with a fake link table.
type parentBed struct {
	t        *testing.T
	networks map[string]backend.Network
	links    map[string]bool // VLAN links that exist
	madeBy   map[string]bool // links the admin made (never tartan's to remove)
}

func newParentBed(t *testing.T) *parentBed {
	return &parentBed{t: t, networks: map[string]backend.Network{}, links: map[string]bool{}, madeBy: map[string]bool{}}
}

// create is prepareMacvlan's part: the link is made when missing (Created).
func (b *parentBed) create(id, parent string) {
	created := !b.links[parent]
	b.links[parent] = true
	n := backend.Network{ID: id, Backend: Name, Parent: parent, Mode: "private"}
	n.ParentCreated = created || parentOwned(n, slices.Collect(maps.Values(b.networks)))
	b.networks[id] = n
}

// remove is DeleteNetwork's part: undoMacvlan, then the record goes.
func (b *parentBed) remove(id string) {
	n := b.networks[id]
	delete(b.networks, id)
	if RemovesParent(n, slices.Collect(maps.Values(b.networks))) {
		if b.madeBy[n.Parent] {
			b.t.Fatalf("removing %s deleted %s, which the admin made", id, n.Parent)
		}
		delete(b.links, n.Parent)
	}
	delete(b.networks, id)
}

// TestVLANParentRemovedWithLastNetwork: a VLAN parent tartan made goes with
// the last local network on it, whatever the order of removal. Before the
// fix only the network that made the link recorded it, so removing
// that one first (while another still used it) leaked the link forever.
func TestVLANParentRemovedWithLastNetwork(t *testing.T) {
	for _, order := range [][]string{{"a", "b", "c"}, {"c", "b", "a"}, {"b", "a", "c"}, {"a", "c", "b"}} {
		t.Run(fmt.Sprint(order), func(t *testing.T) {
			b := newParentBed(t)
			b.create("a", "eth0.100")
			b.create("b", "eth0.100")
			b.create("c", "eth0.100")
			b.create("x", "eth0.200") // another parent: untouched
			for i, id := range order {
				b.remove(id)
				if want := i < len(order)-1; b.links["eth0.100"] != want {
					t.Fatalf("after removing %v: eth0.100 exists=%v, want %v", order[:i+1], b.links["eth0.100"], want)
				}
			}
			if !b.links["eth0.200"] {
				t.Fatal("eth0.200 went with another parent's networks")
			}
		})
	}
}

// TestAdminParentKept: a parent that existed before tartan is never removed.
func TestAdminParentKept(t *testing.T) {
	b := newParentBed(t)
	b.links["eth0.300"], b.madeBy["eth0.300"] = true, true
	b.create("a", "eth0.300")
	b.create("b", "eth0.300")
	b.remove("a")
	b.remove("b")
	if !b.links["eth0.300"] {
		t.Fatal("the admin's eth0.300 was removed")
	}
}

// TestShareParentOwnership: records from before shared ownership (only the
// creator marked) are evened out at Restore, so the leak is fixed for
// networks that existed before the upgrade too.
func TestShareParentOwnership(t *testing.T) {
	all := []backend.Network{
		{ID: "a", Backend: Name, Parent: "eth0.100", ParentCreated: true},
		{ID: "b", Backend: Name, Parent: "eth0.100"},
		{ID: "c", Backend: Name, Parent: "eth0"},
	}
	nets := map[string]backend.Network{}
	for _, n := range all {
		nets[n.ID] = Backend{}.Restored(n, all)
	}
	if !nets["b"].ParentCreated || nets["c"].ParentCreated {
		t.Fatalf("ownership after restore: %+v", nets)
	}
	if !RemovesParent(nets["b"], []backend.Network{nets["c"]}) {
		t.Fatal("the last network on eth0.100 keeps the link")
	}
}

// TestMacvlanEndpointsNeverStale: a macvlan endpoint's link lives in its
// container, out of the host's sight, so the backend never reports it gone
// or unjoined (reconcile would drop its record) and always takes it for
// live (its published ports and address stay its own).
func TestMacvlanEndpointsNeverStale(t *testing.T) {
	n := backend.Network{ID: "mv", Backend: Name, Parent: "eth0"}
	e := backend.Endpoint{ID: "e", Network: "mv", IP: "10.0.0.5", HostIf: "tnmissing0000", PeerIf: "tpmissing0000"}
	st, err := Backend{}.CheckEndpoint(n, e)
	if err != nil || st.Gone || st.Unjoined || len(st.Routes) != 0 {
		t.Fatalf("check: %+v %v", st, err)
	}
	if !(Backend{}).Live(n, e) {
		t.Fatal("a macvlan endpoint taken for dead")
	}
	if err := (Backend{}).PublishRefused(n, e); err == nil {
		t.Fatal("ports published on macvlan")
	}
	j := Backend{}.Join(n, e)
	if j.Gateway.IsValid() || len(j.Routes) != 0 || j.Interface != e.PeerIf {
		t.Fatalf("join without a gateway: %+v", j)
	}
}
