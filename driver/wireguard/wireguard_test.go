package wireguard

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/tartan-net/tartan/driver/backend"
	"github.com/tartan-net/tartan/driver/backend/backendtest"
)

// TestPeers: wireguard routes every remote block through the host's one
// WireGuard device, on the segment or not, with no neighbour or FDB
// entries, and plans one WireGuard peer per host with its key, endpoint
// and blocks; the firewall admits the pool's traffic from the device.
func TestPeers(t *testing.T) {
	b := New(backend.Host{ID: "self"}, "macvlan", NewDevice(DeviceName, DefaultPort, ModeAuto, Key{}, nil))
	n := backendtest.Network(Name)
	n.VNI, n.Device = 0, ""
	plan, ok := backendtest.Plan(b, n)
	want := []string{"10.244.0.64/26 via 192.0.2.11 dev tartan-wg onlink", "10.244.0.128/26 via 198.51.100.12 dev tartan-wg onlink"}
	if got := backendtest.Routes(plan); !ok || !slices.Equal(got, want) {
		t.Fatalf("routes %q, want %q", got, want)
	}
	if len(plan.Neighs) != 0 || len(plan.FDBs) != 0 || len(plan.Problems) != 0 || len(plan.Tunnels) != 2 {
		t.Fatalf("entries %+v %+v, tunnels %+v, problems %q", plan.Neighs, plan.FDBs, plan.Tunnels, plan.Problems)
	}
	if tn := plan.Tunnels[1]; tn.Host != "near" || tn.Key != backendtest.NearKey || tn.Endpoint != netip.MustParseAddrPort("192.0.2.11:51820") {
		t.Fatalf("near's tunnel: %+v", tn)
	}
	if len(b.Describe().Options) != 0 || !b.Describe().OwnGateway {
		t.Fatalf("description %+v", b.Describe())
	}
	if fw, ok := b.Firewall(n); !ok || fw.Tunnel != DeviceName || fw.Device != "" {
		t.Fatalf("firewall %+v", fw)
	}
}
