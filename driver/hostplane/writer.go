// Package hostplane writes this host's host-wide state: the eBPF fast
// path's maps, tartan's firewall rules, the WireGuard device's peers and
// what the BGP speaker announces. One Writer applies them from one
// snapshot of the host's desired state, in a fixed order (fast path,
// firewall, WireGuard peers, BGP: a port published from now on is left to
// the kernel path before its DNAT rule is in place; a prefix is announced
// once the firewall and the tunnels take its traffic),
// one write at a time; it is handed the snapshot and the appliers, never
// the driver, so that a new host-wide part (policy) is one more part of
// the snapshot.
package hostplane

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"

	"github.com/tartan-net/tartan/driver/bgp/speaker"
	"github.com/tartan-net/tartan/driver/fastpath"
	"github.com/tartan-net/tartan/driver/firewall"
	"github.com/tartan-net/tartan/driver/wireguard"
)

// Part is a set of the host-wide parts.
type Part uint8

// The parts, in the order a write applies them.
const (
	FastPath Part = 1 << iota
	Firewall
	Tunnels
	Announce
	All = FastPath | Firewall | Tunnels | Announce
)

var order = []Part{FastPath, Firewall, Tunnels, Announce}

func (p Part) String() string {
	switch p {
	case FastPath:
		return "fast path"
	case Firewall:
		return "firewall"
	case Tunnels:
		return "WireGuard peers"
	case Announce:
		return "BGP announcements"
	}
	return fmt.Sprintf("parts %#x", uint8(p))
}

// State is the host's desired host-wide state; a snapshot fills in the
// parts it is asked for.
type State struct {
	FastPath fastpath.State
	Firewall firewall.State
	// PeersComplete: every VXLAN network had a plan when Firewall.Peers
	// was read (a firewall in place with a complete set is worth keeping).
	PeersComplete bool
	Tunnels       []wireguard.Peer
	// TunnelsPlanned is false while a wireguard network has no plan yet:
	// the device keeps the peers it has.
	TunnelsPlanned bool
	// Announce is what the BGP speaker announces; AnnouncePlanned is false
	// while a network that announces has no plan yet (the speaker keeps
	// what it announces).
	Announce        []speaker.Route
	AnnouncePlanned bool
}

// Appliers write each part into the kernel; a nil one is a part this host
// does not have (the fast path off).
type Appliers struct {
	FastPath func(fastpath.State) error
	Firewall func(st firewall.State, peersComplete bool) error
	Tunnels  func([]wireguard.Peer) error
	Announce func([]speaker.Route) error
}

// Result is what one write did: the parts it applied, and each failure.
type Result struct {
	Gen     uint64
	Applied Part
	errs    map[Part]error
}

// Err is part's failure in the write (nil: applied, or not written).
func (r Result) Err(part Part) error { return r.errs[part] }

// Error joins every failure, nil when none.
func (r Result) Error() error {
	var errs []error
	for _, p := range order {
		if err := r.errs[p]; err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// Writer applies the host's state.
type Writer struct {
	snapshot func(Part) State
	ap       Appliers
	poke     chan struct{}

	mu      sync.Mutex // one write at a time; what follows is under it
	gen     uint64
	failed  Part // parts whose last write failed: every write retries them
	pending Part // parts poked, not yet written
	// lastFW and lastWG are the firewall and WireGuard peers last applied
	// (a poke skips them when unchanged; their appliers derive everything
	// from their state). The fast path is applied whenever asked: its
	// applier reads the kernel's interfaces too.
	lastFW *firewall.State
	lastWG []wireguard.Peer
	pokeMu sync.Mutex // guards pending for Poke
}

// New returns a writer that reads the host's desired state with snapshot
// (for the parts it names) and writes it with ap.
func New(snapshot func(Part) State, ap Appliers) *Writer {
	return &Writer{snapshot: snapshot, ap: ap, poke: make(chan struct{}, 1)}
}

// Write applies parts, and every part whose last write failed, from one
// snapshot taken in this write's turn (so that the last write is the
// newest state), in order. A part whose applier fails is retried by the
// next write; the others are not applied again for it.
func (w *Writer) Write(parts Part) Result {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writeLocked(parts, false)
}

// Poke asks Run to apply parts soon; the firewall and the WireGuard peers
// are skipped when their state is the one last applied.
func (w *Writer) Poke(parts Part) {
	w.pokeMu.Lock()
	w.pending |= parts
	w.pokeMu.Unlock()
	select {
	case w.poke <- struct{}{}:
	default:
	}
}

// Run applies what Poke asks for until ctx ends; failures go to report.
func (w *Writer) Run(ctx context.Context, report func(Result)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.poke:
		}
		w.pokeMu.Lock()
		parts := w.pending
		w.pending = 0
		w.pokeMu.Unlock()
		w.mu.Lock()
		r := w.writeLocked(parts, true)
		w.mu.Unlock()
		if r.Error() != nil && report != nil {
			report(r)
		}
	}
}

// Locked runs fn while no write runs (a check of the kernel against the
// state, which a write in flight would make look wrong).
func (w *Writer) Locked(fn func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fn()
}

// Gen is the number of writes made.
func (w *Writer) Gen() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gen
}

func (w *Writer) writeLocked(parts Part, skipSame bool) Result {
	parts |= w.failed
	if w.ap.FastPath == nil {
		parts &^= FastPath
	}
	if w.ap.Tunnels == nil {
		parts &^= Tunnels
	}
	if w.ap.Announce == nil {
		parts &^= Announce
	}
	w.gen++
	r := Result{Gen: w.gen, errs: map[Part]error{}}
	if parts == 0 {
		return r
	}
	st := w.snapshot(parts)
	if parts&Tunnels != 0 && !st.TunnelsPlanned {
		parts &^= Tunnels // not known yet: the device keeps its peers
	}
	if parts&Announce != 0 && !st.AnnouncePlanned {
		parts &^= Announce // not known yet: the speaker keeps what it announces
	}
	if skipSame && w.failed&Firewall == 0 && w.lastFW != nil && reflect.DeepEqual(*w.lastFW, st.Firewall) {
		parts &^= Firewall
	}
	if skipSame && w.failed&Tunnels == 0 && w.lastWG != nil && (len(w.lastWG) == 0 && len(st.Tunnels) == 0 || reflect.DeepEqual(w.lastWG, st.Tunnels)) {
		parts &^= Tunnels
	}
	for _, p := range order {
		if parts&p == 0 {
			continue
		}
		var err error
		switch p {
		case FastPath:
			err = w.ap.FastPath(st.FastPath)
		case Firewall:
			err = w.ap.Firewall(st.Firewall, st.PeersComplete)
			w.lastFW = nil
			if err == nil {
				fw := st.Firewall
				w.lastFW = &fw
			}
		case Tunnels:
			err = w.ap.Tunnels(st.Tunnels)
			w.lastWG = nil
			if err == nil {
				w.lastWG = st.Tunnels
				if w.lastWG == nil {
					w.lastWG = []wireguard.Peer{}
				}
			}
		case Announce:
			err = w.ap.Announce(st.Announce)
		}
		if err != nil {
			r.errs[p] = err
			w.failed |= p
			continue
		}
		w.failed &^= p
		r.Applied |= p
	}
	return r
}
