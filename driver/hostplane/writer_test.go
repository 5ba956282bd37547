package hostplane

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tartan-net/tartan/driver/bgp/speaker"
	"github.com/tartan-net/tartan/driver/fastpath"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/wireguard"
)

// recorder is a host whose appliers note each call and can be made to
// fail.
type recorder struct {
	mu    sync.Mutex
	calls []string
	fail  map[string]error
	state State
	snaps int
}

func (r *recorder) note(part string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, part)
	return r.fail[part]
}

func (r *recorder) taken() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	return out
}

func (r *recorder) writer(fastPath bool) *Writer {
	ap := Appliers{
		Firewall: func(firewall.State, bool) error { return r.note("firewall") },
		Tunnels:  func([]wireguard.Peer) error { return r.note("tunnels") },
		Announce: func([]speaker.Route) error { return r.note("announce") },
	}
	if fastPath {
		ap.FastPath = func(fastpath.State) error { return r.note("fastpath") }
	}
	return New(func(Part) State {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.snaps++
		return r.state
	}, ap)
}

// One write applies the parts in order, fast path, firewall, WireGuard
// peers, BGP announcements, from one snapshot; a part that failed is
// applied again by the next write without the others that succeeded; a
// fast path that is off is never called.
func TestWriterOrderAndRetry(t *testing.T) {
	r := &recorder{fail: map[string]error{}, state: State{TunnelsPlanned: true, AnnouncePlanned: true}}
	w := r.writer(true)
	res := w.Write(All)
	if got := r.taken(); !slices.Equal(got, []string{"fastpath", "firewall", "tunnels", "announce"}) || r.snaps != 1 || res.Error() != nil || res.Applied != All {
		t.Fatalf("first write: calls %v, snapshots %d, result %+v", got, r.snaps, res)
	}

	r.fail["firewall"] = errors.New("iptables-restore: resource busy")
	res = w.Write(All)
	if got := r.taken(); !slices.Equal(got, []string{"fastpath", "firewall", "tunnels", "announce"}) {
		t.Fatalf("a failing firewall stops nothing after it: %v", got)
	}
	if !errors.Is(res.Err(Firewall), r.fail["firewall"]) || res.Err(Tunnels) != nil || res.Applied != FastPath|Tunnels|Announce {
		t.Fatalf("result: %+v (%v)", res, res.Error())
	}

	// A write of the tunnels alone retries the firewall first; the fast
	// path, applied, is not written again.
	delete(r.fail, "firewall")
	res = w.Write(Tunnels)
	if got := r.taken(); !slices.Equal(got, []string{"firewall", "tunnels"}) || res.Error() != nil {
		t.Fatalf("retry: calls %v, %v", got, res.Error())
	}
	if res = w.Write(Tunnels); !slices.Equal(r.taken(), []string{"tunnels"}) {
		t.Fatalf("nothing failed any more: only what was asked")
	}

	// Tunnels and announcements not planned yet: the device keeps its
	// peers, the speaker what it announces.
	r.state.TunnelsPlanned, r.state.AnnouncePlanned = false, false
	w.Write(All)
	if got := r.taken(); !slices.Equal(got, []string{"fastpath", "firewall"}) {
		t.Fatalf("unplanned tunnels and announcements: %v", got)
	}

	// No fast path on this host.
	r2 := &recorder{fail: map[string]error{}, state: State{TunnelsPlanned: true}}
	r2.writer(false).Write(All)
	if got := r2.taken(); !slices.Equal(got, []string{"firewall", "tunnels"}) {
		t.Fatalf("fast path off: %v", got)
	}
}

// A poke applies the firewall and the WireGuard peers only when their
// state changed since last applied (a write asked for directly applies
// them whatever); the fast path whenever asked.
func TestWriterPokeSkipsUnchanged(t *testing.T) {
	r := &recorder{fail: map[string]error{}, state: State{TunnelsPlanned: true}}
	w := r.writer(true)
	w.Write(All)
	r.taken()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reports := make(chan Result, 10)
	go w.Run(ctx, func(res Result) { reports <- res })

	waitCalls := func(want []string) {
		t.Helper()
		var got []string
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			r.mu.Lock()
			got = slices.Clone(r.calls)
			r.mu.Unlock()
			if slices.Equal(got, want) {
				r.taken()
				return
			}
		}
		t.Fatalf("calls %v, want %v", got, want)
	}
	gen := w.Gen()
	w.Poke(All)
	waitCalls([]string{"fastpath"})
	for w.Gen() == gen {
		time.Sleep(5 * time.Millisecond)
	}

	r.mu.Lock()
	r.state.Firewall.Peers = []netip.Addr{netip.MustParseAddr("192.0.2.7")}
	r.mu.Unlock()
	w.Poke(Firewall | Tunnels)
	waitCalls([]string{"firewall"})

	r.mu.Lock()
	r.state.Tunnels = []wireguard.Peer{{Endpoint: netip.MustParseAddrPort("192.0.2.7:51820")}}
	r.fail["tunnels"] = errors.New("device busy")
	r.mu.Unlock()
	w.Poke(Tunnels)
	waitCalls([]string{"tunnels"})
	select {
	case res := <-reports:
		if res.Err(Tunnels) == nil {
			t.Fatalf("report without the failure: %+v", res)
		}
	case <-time.After(time.Minute):
		t.Fatal("a failed poke was not reported")
	}
	// The failed part is retried by the next poke, even of another part.
	r.mu.Lock()
	delete(r.fail, "tunnels")
	r.mu.Unlock()
	w.Poke(FastPath)
	waitCalls([]string{"fastpath", "tunnels"})
}
