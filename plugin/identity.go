package plugin

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/kv"
)

// IdentityTTL is how long the store keeps this host's identity claim after
// its last renewal (renewed every half of it; Consul may keep it up to
// twice as long).
const IdentityTTL = 15 * time.Second

// IdentityPath is the key of a host's identity claim.
func IdentityPath(host string) string { return "identity/" + host }

// IdentityRecord is what a host's identity claim says of the process that
// holds it.
type IdentityRecord struct {
	Instance string    `json:"instance"` // random, one per process
	Boot     string    `json:"boot"`     // the kernel's boot ID: one per machine and boot
	Address  string    `json:"address,omitempty"`
	Started  time.Time `json:"started"` // by the holder's clock: shown, never compared
}

// Identity makes sure that one machine at a time serves as this host ID: a
// host ID lives in the state folder, which a VM template, a disk image or a
// restored backup copies to another machine, and two live machines with
// one ID take each other's addresses (each sweeps the other's records as
// its own orphans). The live holder of the ID holds a claim in the store
// (kv.Claims: a Consul session that the server times). A process that
// finds the claim held by a process of its own machine's boot (it died), or
// by one at its own address (this machine before a reboot), breaks it; held
// by another machine that keeps it alive, it refuses: it never registers,
// claims or sweeps, and says which state folder was copied and what to do.
// Consul refuses a second agent with a live node's ID the same way.
type Identity struct {
	claims kv.Claims // nil: a store of one host's own, nothing to tell apart
	host   string
	me     IdentityRecord
	ttl    time.Duration
	log    logrus.FieldLogger

	mu      sync.Mutex
	held    bool
	refused error
	lastErr error         // why the last claim attempt failed (nil: it did not)
	changed chan struct{} // closed (and replaced) at every change of held or refused
}

// NewIdentity returns the identity of host in store; Run claims it.
// address is this machine's underlay address ("" unknown), boot its boot
// ID (BootID).
func NewIdentity(store kv.Store, host, address, boot string, log logrus.FieldLogger) *Identity {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	id := &Identity{host: host, ttl: IdentityTTL, log: log, changed: make(chan struct{}),
		me: IdentityRecord{Instance: hex.EncodeToString(b), Boot: boot, Address: address, Started: time.Now().UTC()}}
	if c, err := kv.ClaimsOf(store); err == nil {
		id.claims = c
	} else {
		id.held = true
	}
	return id
}

// BootID tells this machine's boot apart from every other machine's and
// boot: the kernel's boot ID (a new one at every boot), and the network
// namespace the plugin serves in (the host's), because machines can share
// a kernel: network namespaces of a test bed, or nested Docker hosts each
// in their own namespace, read one boot ID. "" when neither can be read.
func BootID() string {
	var parts []string
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		parts = append(parts, strings.TrimSpace(string(b)))
	}
	if ns, err := os.Readlink("/proc/self/ns/net"); err == nil {
		parts = append(parts, ns) // net:[4026531840]
	}
	return strings.Join(parts, " ")
}

func (id *Identity) set(held bool, refused error) {
	id.mu.Lock()
	defer id.mu.Unlock()
	if id.held == held && errors.Is(id.refused, refused) {
		return
	}
	id.held, id.refused = held, refused
	close(id.changed)
	id.changed = make(chan struct{})
}

func (id *Identity) state() (held bool, refused error, changed <-chan struct{}) {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.held, id.refused, id.changed
}

// Refused says why this process must not serve as its host ID (nil: it
// may, or it does not know yet).
func (id *Identity) Refused() error {
	_, refused, _ := id.state()
	return refused
}

// Ready waits until this process holds its identity: nil then; the refusal
// when another machine holds it; an error saying the store has not
// confirmed it yet when ctx ends first.
func (id *Identity) Ready(ctx context.Context) error {
	for {
		held, refused, changed := id.state()
		switch {
		case refused != nil:
			return refused
		case held:
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			id.mu.Lock()
			lastErr := id.lastErr
			id.mu.Unlock()
			if lastErr != nil {
				// Name the store and what it answered (an unreachable
				// address, a refused token): that is what to fix.
				return fmt.Errorf("the store has not confirmed yet that this machine is the only one serving as host %s (its identity claim %s): %w; try again once the store answers (%w)",
					id.host, IdentityPath(id.host), lastErr, ctx.Err())
			}
			return fmt.Errorf("the store has not confirmed yet that this machine is the only one serving as host %s (its identity claim %s): try again once the store answers: %w",
				id.host, IdentityPath(id.host), ctx.Err())
		}
	}
}

// Run claims the identity, keeps it claimed while ctx lives (again when
// the store lost the claim), and refuses for good when another live machine
// holds it.
func (id *Identity) Run(ctx context.Context) {
	if id.claims == nil {
		return
	}
	me, _ := json.Marshal(id.me)
	key := IdentityPath(id.host)
	var other rival // the other machine's instance we are waiting out
	backoff := time.Second
	denied := false
	for ctx.Err() == nil {
		held, holder, lost, err := id.claims.Claim(ctx, key, me, id.ttl)
		if errors.Is(err, kv.ErrDenied) {
			// A token from before the claim (Consul ACLs without session
			// write): serve as before, unchecked, and say how to check.
			if !denied {
				denied = true
				id.log.Warnf("%v: the check that no other machine serves as host %s (a copied state folder) is off until the token may write sessions: add session_prefix \"\" { policy = \"write\" } to its Consul ACL policy", err, id.host)
			}
			id.set(true, nil)
			if !kv.Sleep(ctx, time.Minute) {
				return
			}
			continue
		}
		id.mu.Lock()
		id.lastErr = err
		id.mu.Unlock()
		if err != nil {
			id.log.Debugf("identity claim: %v", err)
			id.set(false, nil)
			if !kv.Sleep(ctx, backoff) {
				return
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = time.Second
		if held {
			other = rival{}
			id.set(true, nil)
			select {
			case <-ctx.Done():
				return
			case <-lost:
				id.log.Warn("the store stopped seeing this host's identity claim renewed (an outage, or it was broken): claiming it again")
				id.set(false, nil)
				continue
			}
		}
		var h IdentityRecord
		if len(holder) == 0 || json.Unmarshal(holder, &h) != nil || h.Instance == "" {
			// Nobody holds it, yet it could not be claimed: Consul's lock
			// delay after a claim ended (this machine's previous process).
			if !kv.Sleep(ctx, time.Second) {
				return
			}
			continue
		}
		again, err := id.contend(ctx, key, h, &other)
		if err != nil {
			id.log.Error(err)
			id.set(false, err)
			return
		}
		if again {
			continue
		}
		if !kv.Sleep(ctx, id.ttl/2) {
			return
		}
	}
}

// rival is another process that holds this host's identity claim, and
// since when this one has seen it hold it.
type rival struct {
	instance string
	since    time.Time
}

// contend decides about a claim another process (h) holds: this machine's
// own previous process's claim is taken over (again: claim at once);
// another's is waited out (other keeps whose, since when), and after three
// claim lifetimes err says that another machine serves as this host.
func (id *Identity) contend(ctx context.Context, key string, h IdentityRecord, other *rival) (again bool, err error) {
	switch {
	case h.Boot != "" && h.Boot == id.me.Boot, h.Address != "" && h.Address == id.me.Address:
		// This machine's own previous process (it died holding the
		// claim), or this machine before a reboot: take it over.
		id.log.WithFields(logrus.Fields{"instance": h.Instance, "address": h.Address}).Info("taking over this host's identity claim from this machine's previous plugin process")
		if err := id.claims.Break(ctx, key); err != nil {
			id.log.Debugf("break the identity claim: %v", err)
		}
		return true, nil
	case h.Instance != other.instance:
		// Another machine, or this one under another address before
		// a restart: a claim nobody renews lapses within twice its
		// lifetime. Wait that out before deciding.
		*other = rival{instance: h.Instance, since: time.Now()}
		id.log.WithFields(logrus.Fields{"address": h.Address, "boot": h.Boot}).Warn("this host's identity is claimed by another process: waiting to see whether it is alive")
	case time.Since(other.since) > 3*id.ttl:
		err := fmt.Errorf("host ID %s is in use by another machine (address %s, boot %s, running since %s by its clock): this machine's tartan state folder (/var/lib/tartan on the host) is a copy of that machine's (a VM template, a disk image or a restored backup), and two machines with one host ID take each other's addresses. "+
			"This plugin serves no request until that is fixed: on this machine, docker plugin disable -f tartan:latest, rm -r /var/lib/tartan, docker plugin enable tartan:latest (a new host ID is made; this machine's containers on tartan networks must be started again)",
			id.host, cmp.Or(h.Address, "unknown"), cmp.Or(h.Boot, "unknown"), h.Started.Format(time.RFC3339))
		return false, err
	}
	return false, nil
}
