package plugin

import (
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/wireguard"
)

// TestWireGuardFindings: doctor reports a peer sent to and never heard
// from, and one silent for longer than StaleHandshake; a peer with a recent
// handshake, or one not tried yet, is fine.
func TestWireGuardFindings(t *testing.T) {
	now := time.Date(2026, 12, 5, 1, 0, 0, 0, time.UTC)
	st := wireguard.Status{Port: 51820, Peers: []wireguard.PeerStatus{
		{PublicKey: "fresh", Endpoint: "10.98.0.12:51820", LastHandshake: now.Add(-time.Minute), RxBytes: 10, TxBytes: 10},
		{PublicKey: "untried", Endpoint: "10.98.0.13:51820"},
		{PublicKey: "deaf", Endpoint: "10.98.0.14:51820", TxBytes: 148},
		{PublicKey: "gone", Endpoint: "10.98.0.15:51820", LastHandshake: now.Add(-10 * time.Minute), RxBytes: 5, TxBytes: 5},
	}}
	fs := wireguardFindings(st, now)
	if len(fs) != 2 || !strings.Contains(fs[0].What, "peer deaf at 10.98.0.14:51820 never answered (148 bytes sent") ||
		!strings.Contains(fs[1].What, "peer gone at 10.98.0.15:51820 has not handshaken for 10m0s") || !strings.Contains(fs[0].Fix, "UDP 51820") {
		t.Fatalf("findings: %+v", fs)
	}
}
