package wireguard

import (
	"slices"
	"time"

	"github.com/sirupsen/logrus"
)

// A peer's new key (its host rotated it) is met by two handshakes at once
// more often than not: this host starts one as it sets the peer (the
// persistent keepalive), and the peer, whose sessions its new key ended,
// starts its own for the traffic it has to send. WireGuard meets crossed
// initiations with a retry after REKEY_TIMEOUT (5 s), and wireguard-go,
// whose handshake workers may take the two messages at once, has been seen
// to keep a session the peer never had, sending into it until it hears
// nothing for 15 s (issue 29's rotation soak: 151 pings lost between two
// hosts); and crossed initiations that each side answers, neither taking
// the other's response, hold the traffic for WireGuard's 5 s retry (seen
// in TestWireGuard on Docker 28). So a peer whose key replaced another at
// the same endpoint is watched for its first seconds: one with no
// completed handshake, or that this host sends to and that sends nothing
// back, for two looks in a row is set again from scratch
// (removed and added: its sessions go, and the keepalive starts one fresh
// handshake while the peer's own waits for its retry), at most
// freshRetries times. New hosts and a restarted device's peers are not
// watched (no crossing to fear, and one-way traffic would look silent).
const (
	freshCheck   = 250 * time.Millisecond // between two looks at a new peer's counters
	freshWindow  = 5 * time.Second        // how long a new peer is watched
	freshRetries = 2                      // how many times it may be set again
)

// freshPeer is a new peer under watch.
type freshPeer struct {
	since   time.Time
	sampled bool   // tx and rx hold the last look's counters
	tx, rx  uint64 // as of the last look
	silent  int    // looks in a row that saw it stuck (sent to and not heard from, or no handshake)
	retries int
}

// watchNew puts the peers of set whose key replaces, at the same
// endpoint, a key of removed (a rotation) under watch (with d.mu held),
// and starts the looks when none run.
func (d *Device) watchNew(set []Peer, removed []Peer) {
	now := time.Now()
	for _, p := range set {
		rotated := slices.ContainsFunc(removed, func(r Peer) bool { return r.Endpoint == p.Endpoint && r.Key != p.Key })
		if !rotated || d.fresh[p.Key] != nil {
			continue
		}
		if d.fresh == nil {
			d.fresh = map[Key]*freshPeer{}
		}
		d.fresh[p.Key] = &freshPeer{since: now}
	}
	if len(d.fresh) > 0 && !d.watching {
		d.watching = true
		time.AfterFunc(freshCheck, d.lookAtNew)
	}
}

// lookAtNew is one look at the peers under watch; it schedules the next
// while any is left.
func (d *Device) lookAtNew() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.eng == nil || !d.lookLocked(time.Now()) {
		d.fresh, d.watching = nil, false
		return
	}
	time.AfterFunc(freshCheck, d.lookAtNew)
}

// lookLocked reads the counters of the peers under watch, sets again those
// stuck for two looks in a row, and says whether any is left to watch.
func (d *Device) lookLocked(now time.Time) bool {
	status, err := d.eng.peers()
	if err != nil {
		d.log.Debugf("WireGuard peers under watch: %v", err)
		return true // the next look reads them again
	}
	counters := map[string]PeerStatus{}
	for _, s := range status {
		counters[s.PublicKey] = s
	}
	for k, f := range d.fresh {
		s, ok := counters[k.String()]
		p, wanted := d.want[k]
		if !ok || !wanted || now.Sub(f.since) > freshWindow {
			delete(d.fresh, k)
			continue
		}
		sent, heard := s.TxBytes > f.tx, s.RxBytes > f.rx
		shaken := !s.LastHandshake.IsZero() // a handshake with the new key completed
		if f.sampled && heard && shaken {
			delete(d.fresh, k) // it answers: the session works
			continue
		}
		// Stuck: sent to and silent, or no handshake completed (crossed
		// initiations each answered and neither response taken: both
		// sides wait for WireGuard's 5 s retry, holding the traffic).
		if f.sampled && (sent && !heard || !shaken) {
			f.silent++
		} else {
			f.silent = 0
		}
		f.sampled, f.tx, f.rx = true, s.TxBytes, s.RxBytes
		if f.silent < 2 {
			continue
		}
		if f.retries >= freshRetries {
			delete(d.fresh, k)
			continue
		}
		f.retries++
		f.sampled, f.silent, f.tx, f.rx = false, 0, 0, 0
		if err := d.eng.configure(nil, 0, []Key{k}, nil); err == nil {
			err = d.eng.configure(nil, 0, nil, []Peer{p})
		}
		if err != nil {
			d.applied = map[Key]Peer{} // not known: all of it again, now
			d.log.WithField("peer", k.String()).Warnf("WireGuard peer stuck since its new key; setting it again failed: %v", err)
			if err := d.applyLocked(); err != nil {
				d.log.Warn(err)
			}
			continue
		}
		d.log.WithFields(logrus.Fields{"peer": k.String(), "endpoint": p.Endpoint, "after": now.Sub(f.since).Round(time.Millisecond)}).
			Info("WireGuard peer stuck since its new key (no handshake, or sent to and silent: crossed handshakes): set again for a fresh one")
	}
	return len(d.fresh) > 0
}
