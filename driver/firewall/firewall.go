// Package firewall keeps tartan's netfilter rules: its networks are let
// through Docker's FORWARD policy (DROP on real hosts), isolated from each
// other and from Docker's bridge networks both ways, by ingress interface;
// masqueraded to the outside unless internal; and the VXLAN port is open to
// the cluster's hosts only. The whole rule set is rendered from the desired
// state (render.go, no I/O) and swapped in with one iptables-restore per
// table, in the flavour (nft or legacy) that Docker itself uses on the host,
// detected again on every apply (iptables.go). IPv6 pools get the same
// isolation in ip6tables, of the same flavour.
package firewall

import (
	"errors"
	"fmt"
)

// Chains tartan owns.
const (
	ForwardChain     = "TARTAN-FORWARD" // filter FORWARD: what tartan lets through
	IsolateChain     = "TARTAN-ISOLATE" // mangle FORWARD: what tartan stops
	InputChain       = "TARTAN-INPUT"
	PostroutingChain = "TARTAN-POSTROUTING"
	DNATChain        = "TARTAN-DNAT"
	RawChain         = "TARTAN-RAW"     // raw PREROUTING
	RawOutputChain   = "TARTAN-RAW-OUT" // raw OUTPUT
)

// Firewall applies rule sets. It is not safe for concurrent use.
type Firewall struct {
	iptables string // the flavour last applied with: iptables-nft or iptables-legacy
	removed  bool   // nothing of tartan's is installed since the last Remove
	// v6 says that IPv6 rules may be installed (in ip6Of(iptables)):
	// applied, or left by an earlier run, or their removal failed.
	v6 bool
	// v6Probed: ip6tables was looked at once for chains left by an earlier
	// run (a restarted plugin), in this flavour.
	v6Probed bool
}

// New returns a firewall; the flavour is found on each Apply.
func New() (*Firewall, error) {
	if len(flavours()) == 0 {
		return nil, fmt.Errorf("no iptables command found: the plugin image must include iptables")
	}
	f := &Firewall{}
	f.iptables = detect()
	return f, nil
}

// Flavour names the iptables command in use.
func (f *Firewall) Flavour() string { return f.iptables }

// Apply replaces tartan's chains with the rules for st and makes sure the
// built-in chains jump to them, in the right place. Running it twice
// changes nothing. When Docker's flavour changed since the last apply (it
// made its chains after tartan started), the old flavour's rules go.
// With IPv6 pools, Render6's rules then go to the flavour's ip6tables;
// without, ip6tables rules of an earlier apply (or run) go.
func (f *Firewall) Apply(st State) error {
	flavour := detect()
	if flavour == "" {
		return fmt.Errorf("no iptables command found: the plugin image must include iptables")
	}
	if f.iptables != "" && f.iptables != flavour {
		_ = removeWith(f.iptables, false)
		if f.v6 {
			_ = removeWith(ip6Of(f.iptables), true)
		}
		f.v6, f.v6Probed = false, false
	}
	f.iptables = flavour
	f.removed = false
	r4 := Render(st)
	if err := ensureSets(r4.Sets); err != nil {
		return err
	}
	if err := install(f.iptables, r4, jumpsFor(false)); err != nil {
		return err
	}
	ip6 := ip6Of(f.iptables)
	if !has6(st) {
		if !f.v6 && !f.v6Probed {
			f.v6Probed = true
			f.v6 = leftover6(ip6)
		}
		if f.v6 {
			if err := removeWith(ip6, true); err != nil {
				return fmt.Errorf("remove the IPv6 rules: %w", err)
			}
			f.v6 = false
		}
		return removeSets(r4.Sets)
	}
	if err := lookPath6(ip6); err != nil {
		return err
	}
	f.v6, f.v6Probed = true, true
	r6 := Render6(st)
	if err := ensureSets(r6.Sets); err != nil {
		return err
	}
	if err := install(ip6, r6, jumpsFor(true)); err != nil {
		return err
	}
	return removeSets(append(r4.Sets, r6.Sets...))
}

// Check says how tartan's chains and jumps in the kernel differ from the
// rule set for st, changing nothing: a chain missing, a chain whose rule
// count is not the one rendered (a rule deleted or added by hand), a jump
// missing, doubled or out of place. It looks in the flavour last applied,
// and in its ip6tables when st has IPv6 pools.
func (f *Firewall) Check(st State) ([]string, error) {
	if f.iptables == "" || (len(st.Pools) == 0 && len(st.Ports) == 0) {
		return nil, nil
	}
	out, err := check(f.iptables, Render(st), jumpsFor(false))
	if err != nil || !has6(st) {
		return out, err
	}
	ip6 := ip6Of(f.iptables)
	if err := lookPath6(ip6); err != nil {
		return append(out, err.Error()), nil
	}
	out6, err := check(ip6, Render6(st), jumpsFor(true))
	return append(out, out6...), err
}

// Remove deletes tartan's jumps and chains in the current flavour, IPv4 and
// IPv6: when a host has no tartan network left, nothing of tartan's stays
// in its firewall, so that removing the networks and then the plugin leaves
// the host as it was.
func (f *Firewall) Remove() error {
	if f.iptables == "" || f.removed {
		return nil
	}
	err := removeWith(f.iptables, false)
	ip6 := ip6Of(f.iptables)
	if !f.v6 && !f.v6Probed {
		f.v6Probed = true
		f.v6 = leftover6(ip6)
	}
	if f.v6 {
		if err6 := removeWith(ip6, true); err6 != nil {
			err = errors.Join(err, err6)
		} else {
			f.v6 = false
		}
	}
	if err == nil {
		err = removeSets(nil) // no rule matches them any more
	}
	if err != nil {
		return err
	}
	f.removed = true
	return nil
}
