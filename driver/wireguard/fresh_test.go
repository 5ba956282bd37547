package wireguard

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
)

// countingEngine is an engine whose peers' counters the test sets; it
// records the configure calls (the watch's logic, apart from a device).
type countingEngine struct {
	status []PeerStatus
	calls  []string
}

func (*countingEngine) mode() string { return ModeUserspace }
func (*countingEngine) close()       {}
func (e *countingEngine) peers() ([]PeerStatus, error) {
	return append([]PeerStatus(nil), e.status...), nil
}
func (e *countingEngine) configure(_ *Key, _ int, remove []Key, set []Peer) error {
	for _, k := range remove {
		e.calls = append(e.calls, "remove "+k.String())
	}
	for _, p := range set {
		e.calls = append(e.calls, "set "+p.Key.String())
	}
	return nil
}

// A peer whose key replaced another at the same endpoint (a rotation),
// that this host sends to and that stays silent for two looks in a row, is
// set again (removed, added: a fresh handshake), at most freshRetries
// times; one that answers, one not sent to, a peer the device held before
// and a new host are left alone; the watch ends after freshWindow.
func TestSilentNewPeerSetAgain(t *testing.T) {
	keys := make([]Key, 11)
	for i := range keys {
		k, err := NewPrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		keys[i] = k.Public()
	}
	silent, answers, idle, old, newHost, crossed := keys[0], keys[1], keys[2], keys[3], keys[4], keys[9]
	peer := func(k Key, n int) Peer {
		return Peer{Key: k, Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(n)}), 51820)}
	}
	eng := &countingEngine{}
	log := logrus.New()
	log.SetOutput(testWriter{t})
	d := NewDevice(DeviceName, DefaultPort, ModeUserspace, keys[8], log)
	// The device holds the rotated hosts' former keys (5, 6, 7 at the
	// endpoints of silent, answers and idle) and old.
	d.eng, d.applied = eng, map[Key]Peer{keys[5]: peer(keys[5], 1), keys[6]: peer(keys[6], 2), keys[7]: peer(keys[7], 3), old: peer(old, 4), keys[10]: peer(keys[10], 6)}
	d.want = map[Key]Peer{silent: peer(silent, 1), answers: peer(answers, 2), idle: peer(idle, 3), old: peer(old, 4), newHost: peer(newHost, 5), crossed: peer(crossed, 6)}
	d.wantSet = true
	d.watching = true // the test looks itself: no look scheduled
	if err := d.applyLocked(); err != nil {
		t.Fatal(err)
	}
	if len(d.fresh) != 4 || d.fresh[old] != nil || d.fresh[newHost] != nil {
		t.Fatalf("watched %v, want the four rotated peers", d.fresh)
	}
	eng.calls = nil
	shaken := time.Now()
	set := func(tx, rx uint64) {
		eng.status = []PeerStatus{
			{PublicKey: silent.String(), TxBytes: tx, RxBytes: 92, LastHandshake: shaken},
			{PublicKey: answers.String(), TxBytes: tx, RxBytes: rx, LastHandshake: shaken},
			{PublicKey: idle.String(), TxBytes: 148, RxBytes: 92, LastHandshake: shaken},
			{PublicKey: crossed.String(), TxBytes: 240, RxBytes: rx}, // no handshake completed
			{PublicKey: old.String(), TxBytes: tx, RxBytes: 0},
		}
	}
	start := time.Now()
	at := func(i int) time.Time { return start.Add(time.Duration(i) * freshCheck) }
	set(1000, 500)
	d.lookLocked(at(1)) // the first look: counters noted
	set(2000, 900)
	d.lookLocked(at(2)) // answers heard from: no longer watched; silent: once
	if d.fresh[answers] != nil || len(eng.calls) != 0 {
		t.Fatalf("after two looks: watched %v, calls %v", d.fresh, eng.calls)
	}
	count := func(k Key) int {
		n := 0
		for _, c := range eng.calls {
			if c == "set "+k.String() {
				n++
			}
		}
		return n
	}
	set(3000, 900)
	d.lookLocked(at(3)) // silent, and crossed (no handshake), twice in a row: set again
	if len(eng.calls) != 4 || count(silent) != 1 || count(crossed) != 1 || !slices.Contains(eng.calls, "remove "+silent.String()) {
		t.Fatalf("calls %v, want silent and crossed removed and set again", eng.calls)
	}
	// Still stuck after each setting again: set again freshRetries times in all.
	for i := 4; i < 4+3*(freshRetries+1); i++ {
		set(uint64(i)*1000, 900)
		d.lookLocked(at(i))
	}
	if count(silent) != freshRetries || count(crossed) != freshRetries || count(answers)+count(idle)+count(old) != 0 {
		t.Fatalf("calls %v, want silent and crossed set again %d times each, no other", eng.calls, freshRetries)
	}
	if d.fresh[silent] != nil {
		t.Fatal("still watched after its retries")
	}
	if d.fresh[idle] == nil {
		t.Fatal("a peer not sent to stopped being watched before the window ended")
	}
	if d.lookLocked(start.Add(freshWindow + time.Second)) {
		t.Fatalf("watched after the window: %v", d.fresh)
	}
}
