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
	DNATChain        = "TARTAN-DNAT"
	RawChain         = "TARTAN-RAW"
)

// Network is what the firewall needs to know of a network.
type Network struct {
	Pool     netip.Prefix
	Internal bool
}

// Port is a published port: HostPort on the host (on HostIP only, when set)
// forwarded to Port of the container at IP.
type Port struct {
	Proto    string // tcp, udp or sctp
	HostIP   netip.Addr
	HostPort int
	IP       netip.Addr
	Port     int
}

// Firewall applies rule sets with one iptables flavour.
type Firewall struct {
	iptables string // iptables, iptables-nft or iptables-legacy
	// VXLANPort, when set, is exempted from connection tracking: the
	// encapsulated packets need none (the inner ones are tracked), and
	// tracking them twice costs VXLAN a good part of its throughput.
	VXLANPort int
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

// Rules renders the full rule set for the given networks and published
// ports: the filter table's forward chain, the nat table's postrouting and
// DNAT chains.
func Rules(nets []Network, ports []Port) (filter, nat, dnat []string) {
	nets = append([]Network(nil), nets...)
	sort.Slice(nets, func(i, j int) bool { return nets[i].Pool.String() < nets[j].Pool.String() })
	for _, n := range nets {
		filter = append(filter, fmt.Sprintf("-A %s -d %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", ForwardChain, n.Pool))
	}
	for _, p := range ports {
		filter = append(filter, fmt.Sprintf("-A %s -d %s/32 -p %s -m %s --dport %d -j ACCEPT", ForwardChain, p.IP, p.Proto, p.Proto, p.Port))
		dst := ""
		if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
			dst = fmt.Sprintf(" -d %s/32", p.HostIP)
		}
		dnat = append(dnat, fmt.Sprintf("-A %s%s -p %s -m %s --dport %d -j DNAT --to-destination %s:%d", DNATChain, dst, p.Proto, p.Proto, p.HostPort, p.IP, p.Port))
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
	return filter, nat, dnat
}

// jumps are the rules that send traffic from built-in chains to tartan's.
var jumps = []struct {
	table, builtin string
	spec           []string
}{
	{"filter", "FORWARD", []string{"-j", ForwardChain}},
	{"nat", "POSTROUTING", []string{"-j", PostroutingChain}},
	{"nat", "PREROUTING", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", DNATChain}},
	{"nat", "OUTPUT", []string{"!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL", "-j", DNATChain}},
	{"raw", "PREROUTING", []string{"-j", RawChain}},
	{"raw", "OUTPUT", []string{"-j", RawChain}},
}

// Apply replaces tartan's chains with the rules for nets and ports and makes
// sure the built-in chains jump to them. Running it twice changes nothing.
func (f *Firewall) Apply(nets []Network, ports []Port) error {
	filter, nat, dnat := Rules(nets, ports)
	var in bytes.Buffer
	fmt.Fprintf(&in, "*filter\n")
	writeChain(&in, ForwardChain, filter)
	fmt.Fprintf(&in, "COMMIT\n*nat\n")
	writeChain(&in, PostroutingChain, nat)
	writeChain(&in, DNATChain, dnat)
	fmt.Fprintf(&in, "COMMIT\n*raw\n")
	var raw []string
	if f.VXLANPort != 0 {
		raw = append(raw, fmt.Sprintf("-A %s -p udp -m udp --dport %d -j NOTRACK", RawChain, f.VXLANPort))
	}
	writeChain(&in, RawChain, raw)
	fmt.Fprintf(&in, "COMMIT\n")
	cmd := exec.Command(f.iptables+"-restore", "-w", "5", "--noflush")
	cmd.Stdin = &in
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s-restore: %w: %s", f.iptables, err, strings.TrimSpace(string(out)))
	}
	for _, j := range jumps {
		if err := f.ensureJump(j.table, j.builtin, j.spec); err != nil {
			return err
		}
	}
	return nil
}

func writeChain(b *bytes.Buffer, chain string, rules []string) {
	fmt.Fprintf(b, ":%s - [0:0]\n-F %s\n", chain, chain)
	for _, r := range rules {
		b.WriteString(r + "\n")
	}
}

// ensureJump puts the jump first in the built-in chain unless it is there.
func (f *Firewall) ensureJump(table, builtin string, spec []string) error {
	if exec.Command(f.iptables, append([]string{"-w", "-t", table, "-C", builtin}, spec...)...).Run() == nil {
		return nil
	}
	args := append([]string{"-w", "-t", table, "-I", builtin, "1"}, spec...)
	if out, err := exec.Command(f.iptables, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", f.iptables, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Remove deletes tartan's jumps and chains (used by tests and uninstall).
func (f *Firewall) Remove() error {
	for _, j := range jumps {
		for exec.Command(f.iptables, append([]string{"-w", "-t", j.table, "-D", j.builtin}, j.spec...)...).Run() == nil {
		}
	}
	for _, c := range [][2]string{{"filter", ForwardChain}, {"nat", PostroutingChain}, {"nat", DNATChain}, {"raw", RawChain}} {
		_ = exec.Command(f.iptables, "-w", "-t", c[0], "-F", c[1]).Run()
		_ = exec.Command(f.iptables, "-w", "-t", c[0], "-X", c[1]).Run()
	}
	return nil
}
