// Package firewall keeps tartan's netfilter rules: its networks are let
// through Docker's FORWARD policy (DROP on real hosts), isolated from each
// other as Docker's bridge networks are, masqueraded to the outside unless
// internal. The whole rule set is rendered from the desired networks and
// swapped in with one iptables-restore per table, in the flavour (nft or
// legacy) that Docker itself uses on the host.
package firewall

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
)

// Chains tartan owns.
const (
	ForwardChain     = "TARTAN-FORWARD"
	PostroutingChain = "TARTAN-POSTROUTING"
)

// Network is what the firewall needs to know of a network.
type Network struct {
	Pool     netip.Prefix
	Internal bool
}

// Firewall applies rule sets with one iptables flavour.
type Firewall struct {
	iptables string // iptables, iptables-nft or iptables-legacy
}

// New picks the flavour whose tables hold Docker's chains, else nft, else
// whatever "iptables" is.
func New() (*Firewall, error) {
	var found []string
	for _, f := range []string{"iptables-nft", "iptables-legacy", "iptables"} {
		if _, err := exec.LookPath(f); err == nil {
			found = append(found, f)
		}
	}
	if len(found) == 0 {
		return nil, fmt.Errorf("no iptables command found: the plugin image must include iptables")
	}
	for _, f := range found {
		// Listing legacy tables creates them: only look where they exist.
		if strings.Contains(f, "legacy") && !legacyTablesLoaded() {
			continue
		}
		if exec.Command(f, "-w", "-t", "filter", "-n", "-L", "DOCKER-USER").Run() == nil ||
			exec.Command(f, "-w", "-t", "nat", "-n", "-L", "DOCKER").Run() == nil {
			return &Firewall{iptables: f}, nil
		}
	}
	return &Firewall{iptables: found[0]}, nil
}

// legacyTablesLoaded says whether this namespace has legacy (x_tables) tables.
func legacyTablesLoaded() bool {
	b, err := os.ReadFile("/proc/net/ip_tables_names")
	return err == nil && strings.TrimSpace(string(b)) != ""
}

// Flavour names the iptables command in use.
func (f *Firewall) Flavour() string { return f.iptables }

// Rules renders the full rule set for the given networks, per table.
func Rules(nets []Network) (filter, nat []string) {
	nets = append([]Network(nil), nets...)
	sort.Slice(nets, func(i, j int) bool { return nets[i].Pool.String() < nets[j].Pool.String() })
	for _, n := range nets {
		filter = append(filter, fmt.Sprintf("-A %s -d %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", ForwardChain, n.Pool))
	}
	for _, n := range nets {
		p := n.Pool
		filter = append(filter, fmt.Sprintf("-A %s -s %s -d %s -j ACCEPT", ForwardChain, p, p))
		if n.Internal {
			filter = append(filter,
				fmt.Sprintf("-A %s -s %s -j DROP", ForwardChain, p),
				fmt.Sprintf("-A %s -d %s -j DROP", ForwardChain, p))
			continue
		}
		for _, o := range nets {
			if o.Pool != p {
				filter = append(filter, fmt.Sprintf("-A %s -s %s -d %s -j DROP", ForwardChain, p, o.Pool))
			}
		}
		filter = append(filter,
			fmt.Sprintf("-A %s -s %s -j ACCEPT", ForwardChain, p),
			fmt.Sprintf("-A %s -d %s -j DROP", ForwardChain, p))
		nat = append(nat, fmt.Sprintf("-A %s -s %s ! -d %s -j MASQUERADE", PostroutingChain, p, p))
	}
	return filter, nat
}

// Apply replaces tartan's chains with the rules for nets and makes sure the
// built-in chains jump to them. Running it twice changes nothing.
func (f *Firewall) Apply(nets []Network) error {
	filter, nat := Rules(nets)
	var in bytes.Buffer
	writeTable(&in, "filter", ForwardChain, filter)
	writeTable(&in, "nat", PostroutingChain, nat)
	cmd := exec.Command(f.iptables+"-restore", "-w", "5", "--noflush")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s-restore: %w: %s", f.iptables, err, strings.TrimSpace(string(out)))
	}
	if err := f.ensureJump("filter", "FORWARD", ForwardChain); err != nil {
		return err
	}
	return f.ensureJump("nat", "POSTROUTING", PostroutingChain)
}

func writeTable(b *bytes.Buffer, table, chain string, rules []string) {
	fmt.Fprintf(b, "*%s\n:%s - [0:0]\n-F %s\n", table, chain, chain)
	for _, r := range rules {
		b.WriteString(r + "\n")
	}
	b.WriteString("COMMIT\n")
}

// ensureJump puts "-j chain" first in the built-in chain unless it is there.
func (f *Firewall) ensureJump(table, builtin, chain string) error {
	out, err := exec.Command(f.iptables, "-w", "-t", table, "-S", builtin).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s -t %s -S %s: %w: %s", f.iptables, table, builtin, err, strings.TrimSpace(string(out)))
	}
	want := fmt.Sprintf("-A %s -j %s", builtin, chain)
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == want {
			return nil
		}
	}
	if out, err := exec.Command(f.iptables, "-w", "-t", table, "-I", builtin, "1", "-j", chain).CombinedOutput(); err != nil {
		return fmt.Errorf("%s -t %s -I %s 1 -j %s: %w: %s", f.iptables, table, builtin, chain, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Remove deletes tartan's jumps and chains (used by tests and uninstall).
func (f *Firewall) Remove() error {
	for _, t := range [][3]string{{"filter", "FORWARD", ForwardChain}, {"nat", "POSTROUTING", PostroutingChain}} {
		for exec.Command(f.iptables, "-w", "-t", t[0], "-D", t[1], "-j", t[2]).Run() == nil {
		}
		_ = exec.Command(f.iptables, "-w", "-t", t[0], "-F", t[2]).Run()
		_ = exec.Command(f.iptables, "-w", "-t", t[0], "-X", t[2]).Run()
	}
	return nil
}
