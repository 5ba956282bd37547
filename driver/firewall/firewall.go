// Package firewall keeps tartan's netfilter rules: its networks are let
// through Docker's FORWARD policy (DROP on real hosts), isolated from each
// other and from Docker's bridge networks both ways, by ingress interface; masqueraded to the outside unless
// internal; and the VXLAN port is open to the cluster's hosts only. The whole
// rule set is rendered from the desired state and swapped in with one
// iptables-restore per table, in the flavour (nft or legacy) that Docker
// itself uses on the host, detected again on every apply. IPv6 pools get the
// same isolation in ip6tables, of the same flavour.
package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"
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

// Interfaces tartan makes (driver/kernel names them).
const (
	endpointIfs = "tn+"      // host ends of endpoint veths
	vxlanIfs    = "tartan.+" // VXLAN devices
)

// commandTimeout bounds every iptables run: a stuck xtables lock must not
// hang the plugin.
const commandTimeout = 20 * time.Second

// Pool is what the firewall needs to know of a routed network: its pool.
// A dual-stack network has two: its IPv4 pool and its IPv6 pool.
type Pool struct {
	Pool     netip.Prefix
	Internal bool
	Device   string // the VXLAN device, if the network has one
	// Tunnel is the WireGuard device its peers' traffic arrives on, if
	// it has one (shared by networks: WireGuard itself admits from each
	// peer only that peer's addresses); the pool's traffic is then never
	// taken from the underlay or a VXLAN device.
	Tunnel string
	// NAT66: masquerade an IPv6 pool's traffic leaving it (off by default).
	// Ignored for IPv4 pools, masqueraded unless Internal.
	NAT66 bool
	// Underlay: peers' traffic of the pool arrives in clear on the
	// underlay (host-gw, direct routing). Otherwise the pool's own
	// addresses are never taken from the underlay: a machine on the LAN
	// cannot inject into a vxlan network (issue 24, audit M3).
	Underlay bool
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

// State is everything the rules are rendered from.
type State struct {
	Pools []Pool
	Ports []Port
	// Underlay is the interface peers' host-gw and direct-routed packets
	// arrive on ("" when unknown).
	Underlay string
	// Bridges are the host's bridge interfaces (Docker's among them):
	// tartan traffic never enters them except through a published port.
	Bridges []string
	// Uplinks are the interfaces the host's own traffic leaves by (the
	// underlay, the default route's): never taken for Docker's bridges,
	// whatever their name or kind (a br0 or vmbr0 that carries the host's
	// uplink; issue 24, audit M5).
	Uplinks []string
	// VXLANPort, when set, is the port of the VXLAN devices: exempt from
	// connection tracking (the inner packets are tracked), closed to
	// forwarded traffic, and open only to Peers.
	VXLANPort int
	// Peers are the underlay addresses of the cluster's other hosts that
	// may send VXLAN here; the port is closed to everyone else, also while
	// none is known (nil or empty: closed to all).
	Peers []netip.Addr
}

// Rules is the rendered rule set, per chain.
type Rules struct {
	Forward, Isolate, Input, Postrouting, DNAT, Raw, RawOutput []string
}

// Render computes the IPv4 rule set, from the IPv4 pools. It does no I/O.
//
// Isolation (every DROP) lives in the mangle table's FORWARD chain, which
// runs before any filter rule: Docker inserts its bridges' accept rules at
// the top of filter FORWARD whenever it makes a bridge network, so a filter
// rule of tartan's cannot stay ahead of "-i br-x ! -o br-x -j ACCEPT".
// What tartan lets through Docker's DROP policy (every ACCEPT) lives in the
// filter table, right below DOCKER-USER, so that operators' rules there hold
// for tartan traffic as for Docker's.
func Render(st State) Rules { return render(st, false) }

// Render6 computes the ip6tables rule set, from the IPv6 pools: the same
// isolation as Render's, without the VXLAN port's rules (the underlay is
// IPv4) and without DNAT (ports are published on IPv4 only). Their traffic
// leaving them is masqueraded only for pools with NAT66.
func Render6(st State) Rules { return render(st, true) }

// render computes the rule set of one address family.
func render(st State, v6 bool) Rules {
	if v6 {
		// IPv4 only: published ports, the VXLAN underlay.
		st.Ports, st.VXLANPort, st.Peers = nil, 0, nil
	}
	var r Rules
	var nets []Pool
	for _, n := range st.Pools {
		if is6(n) == v6 {
			nets = append(nets, n)
		}
	}
	sort.Slice(nets, func(i, j int) bool { return nets[i].Pool.String() < nets[j].Pool.String() })
	ports := append([]Port(nil), st.Ports...)
	sort.Slice(ports, func(i, j int) bool { return portKey(ports[i]) < portKey(ports[j]) })
	peers := append([]netip.Addr(nil), st.Peers...)
	sort.Slice(peers, func(i, j int) bool { return peers[i].Less(peers[j]) })
	if len(nets) == 0 {
		return r
	}
	both := func(format string, args ...any) { // RETURN in mangle, ACCEPT in filter
		rule := fmt.Sprintf(format, args...)
		r.Isolate = append(r.Isolate, fmt.Sprintf("-A %s %s -j RETURN", IsolateChain, rule))
		r.Forward = append(r.Forward, fmt.Sprintf("-A %s %s -j ACCEPT", ForwardChain, rule))
	}
	drop := func(format string, args ...any) {
		r.Isolate = append(r.Isolate, fmt.Sprintf("-A %s ", IsolateChain)+fmt.Sprintf(format, args...)+" -j DROP")
	}
	// A WireGuard pool's traffic from other hosts arrives through its
	// tunnel, decrypted and checked against the sender's addresses: a
	// packet with its source on the underlay or a VXLAN device is a
	// forgery, whatever connection it claims to belong to.
	for _, n := range nets {
		if n.Tunnel != "" {
			for _, in := range plainIngress(st) {
				drop("-i %s -s %s", in, n.Pool)
			}
		}
	}
	for _, n := range nets {
		both("-d %s -m conntrack --ctstate RELATED,ESTABLISHED", n.Pool)
	}
	// A VXLAN device carries its own pool only.
	for _, n := range nets {
		if n.Device != "" {
			drop("-i %s ! -s %s", n.Device, n.Pool)
		}
	}
	if st.VXLANPort != 0 {
		// Containers never reach another host's VXLAN port.
		drop("-i %s -p udp -m udp --dport %d", endpointIfs, st.VXLANPort)
		for _, p := range peers {
			drop("-d %s/32 -p udp -m udp --dport %d", p, st.VXLANPort)
		}
	}
	// Published ports are reached through the host's address (DNAT), not
	// directly at the container from other networks.
	for _, p := range ports {
		both("-d %s/32 -p %s -m %s --dport %d -m conntrack --ctstate DNAT", p.IP, p.Proto, p.Proto, p.Port)
	}
	// Within a network, from tartan's own interfaces only: a packet from a
	// Docker bridge with a spoofed source in the pool gets nowhere (the
	// endpoint veths have a strict reverse-path check, the VXLAN devices
	// the rule above).
	// (A WireGuard pool's other hosts come through its tunnel only.)
	for _, n := range nets {
		ingress := []string{endpointIfs}
		switch {
		case n.Tunnel != "":
			ingress = append(ingress, n.Tunnel)
		default:
			if n.Device != "" {
				ingress = append(ingress, n.Device)
			}
			if n.Underlay && st.Underlay != "" {
				ingress = append(ingress, st.Underlay)
			}
		}
		for _, in := range ingress {
			both("-i %s -s %s -d %s", in, n.Pool, n.Pool)
		}
	}
	// Nothing else enters a tartan network: other tartan networks, Docker's
	// bridges, the outside.
	for _, n := range nets {
		drop("-d %s", n.Pool)
	}
	// Leaving: internal networks go nowhere else.
	for _, n := range nets {
		if n.Internal {
			drop("-s %s", n.Pool)
		}
	}
	// To a published port (DNAT), Docker's or tartan's rules decide, as for
	// Docker's bridges; into a bridge otherwise never.
	r.Isolate = append(r.Isolate, fmt.Sprintf("-A %s -i %s -m conntrack --ctstate DNAT -j RETURN", IsolateChain, endpointIfs))
	seen := map[string]bool{}
	for _, u := range st.Uplinks {
		if u != "" && !seen[u] {
			seen[u] = true
			r.Isolate = append(r.Isolate, fmt.Sprintf("-A %s -i %s -o %s -j RETURN", IsolateChain, endpointIfs, u))
		}
	}
	for _, b := range append([]string{"docker0", "br-+"}, st.Bridges...) {
		if !seen[b] {
			seen[b] = true
			drop("-i %s -o %s", endpointIfs, b)
		}
	}
	for _, n := range nets {
		if !n.Internal {
			r.Forward = append(r.Forward, fmt.Sprintf("-A %s -i %s -s %s -j ACCEPT", ForwardChain, endpointIfs, n.Pool))
			if !v6 || n.NAT66 {
				r.Postrouting = append(r.Postrouting, fmt.Sprintf("-A %s -s %s ! -d %s -j MASQUERADE", PostroutingChain, n.Pool, n.Pool))
			}
		}
	}
	for _, p := range ports {
		dst := ""
		if p.HostIP.IsValid() && !p.HostIP.IsUnspecified() {
			dst = fmt.Sprintf(" -d %s/32", p.HostIP)
		}
		r.DNAT = append(r.DNAT, fmt.Sprintf("-A %s%s -p %s -m %s --dport %d -j DNAT --to-destination %s:%d", DNATChain, dst, p.Proto, p.Proto, p.HostPort, p.IP, p.Port))
	}
	// A container sends with its own address only: strict reverse-path
	// check on the endpoint veths, whatever the host's rp_filter sysctls
	// say (a container with CAP_NET_RAW spoofed another
	// network's source).
	r.Raw = append(r.Raw, fmt.Sprintf("-A %s -i %s -m rpfilter --invert -j DROP", RawChain, endpointIfs))
	if st.VXLANPort != 0 {
		// Only this host's own tunnels: forwarded container traffic to
		// UDP/VXLANPort elsewhere is tracked (and masqueraded) as any other
		//.
		r.Raw = append(r.Raw, fmt.Sprintf("-A %s -p udp -m udp --dport %d -m addrtype --dst-type LOCAL -j NOTRACK", RawChain, st.VXLANPort))
		r.RawOutput = append(r.RawOutput, fmt.Sprintf("-A %s -p udp -m udp --dport %d -m addrtype --src-type LOCAL -j NOTRACK", RawOutputChain, st.VXLANPort))
		for _, p := range peers {
			r.Input = append(r.Input, fmt.Sprintf("-A %s -s %s/32 -p udp -m udp --dport %d -j RETURN", InputChain, p, st.VXLANPort))
		}
		r.Input = append(r.Input, fmt.Sprintf("-A %s -p udp -m udp --dport %d -j DROP", InputChain, st.VXLANPort))
	}
	return r
}

// plainIngress are the interfaces other hosts' traffic arrives on in clear:
// the VXLAN devices and the underlay.
func plainIngress(st State) []string {
	if st.Underlay == "" {
		return []string{vxlanIfs}
	}
	return []string{vxlanIfs, st.Underlay}
}

// is6 says whether a pool is IPv6; anything else goes with IPv4, as before.
func is6(n Pool) bool { return n.Pool.Addr().Is6() }

// has6 says whether st has an IPv6 pool.
func has6(st State) bool {
	for _, n := range st.Pools {
		if is6(n) {
			return true
		}
	}
	return false
}

func portKey(p Port) string {
	return fmt.Sprintf("%s/%05d/%s/%s", p.Proto, p.HostPort, p.HostIP, p.IP)
}

// jump is a rule that sends traffic from a built-in chain to tartan's.
type jump struct {
	table, builtin string
	spec           []string
	// after: the jump goes right below this chain's jump when there is one
	// (DOCKER-USER: operators' rules come first, as for Docker's own).
	after string
}

// jumpsFor returns the jumps of one address family: they differ in the
// loopback range that the nat OUTPUT jump leaves alone.
func jumpsFor(v6 bool) []jump {
	loopback := "127.0.0.0/8"
	if v6 {
		loopback = "::1/128"
	}
	return []jump{
		{"filter", "FORWARD", []string{"-j", ForwardChain}, "DOCKER-USER"},
		{"filter", "INPUT", []string{"-j", InputChain}, ""},
		{"mangle", "FORWARD", []string{"-j", IsolateChain}, ""},
		{"nat", "POSTROUTING", []string{"-j", PostroutingChain}, ""},
		{"nat", "PREROUTING", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", DNATChain}, ""},
		{"nat", "OUTPUT", []string{"!", "-d", loopback, "-m", "addrtype", "--dst-type", "LOCAL", "-j", DNATChain}, ""},
		{"raw", "PREROUTING", []string{"-j", RawChain}, ""},
		{"raw", "OUTPUT", []string{"-j", RawOutputChain}, ""},
	}
}

// chainRules is one of tartan's chains with its rendered rules.
type chainRules struct {
	table, chain string
	rules        []string
}

// layout lists tartan's chains, table by table, with r's rules: the same
// for both address families.
func layout(r Rules) []chainRules {
	return []chainRules{{"filter", ForwardChain, r.Forward}, {"filter", InputChain, r.Input}, {"mangle", IsolateChain, r.Isolate},
		{"nat", PostroutingChain, r.Postrouting}, {"nat", DNATChain, r.DNAT}, {"raw", RawChain, r.Raw}, {"raw", RawOutputChain, r.RawOutput}}
}

// ip6Of names the ip6tables command of an iptables flavour:
// iptables-nft -> ip6tables-nft, iptables-legacy -> ip6tables-legacy.
func ip6Of(iptables string) string {
	return "ip6tables" + strings.TrimPrefix(iptables, "iptables")
}

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

func flavours() []string {
	var found []string
	for _, f := range []string{"iptables-nft", "iptables-legacy", "iptables"} {
		if _, err := exec.LookPath(f); err == nil {
			found = append(found, f)
		}
	}
	return found
}

// detect picks the flavour whose tables hold Docker's chains; without them
// (Docker has not made them yet, at boot) legacy when legacy tables are
// loaded, else nft. Apply detects again every time, so a guess made before
// Docker made its chains is corrected within a resync.
func detect() string {
	found := flavours()
	if len(found) == 0 {
		return ""
	}
	for _, f := range found {
		// Listing legacy tables creates them: only look where they exist.
		if strings.Contains(f, "legacy") && !legacyTablesLoaded() {
			continue
		}
		out, err := output(f, "-w", "5", "-t", "filter", "-n", "-L", "DOCKER-USER")
		if err == nil || strings.Contains(out, "xtables lock") {
			// (A busy lock means another program is writing these
			// tables, most likely Docker: waiting again for the DOCKER
			// chain would only double the wait.)
			return f
		}
		if run(f, "-w", "5", "-t", "nat", "-n", "-L", "DOCKER") == nil {
			return f
		}
	}
	if legacyTablesLoaded() {
		for _, f := range found {
			if strings.Contains(f, "legacy") {
				return f
			}
		}
	}
	return found[0]
}

// legacyTablesLoaded says whether this namespace has legacy (x_tables) tables.
func legacyTablesLoaded() bool {
	b, err := os.ReadFile("/proc/net/ip_tables_names")
	return err == nil && strings.TrimSpace(string(b)) != ""
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
	if err := install(f.iptables, Render(st), jumpsFor(false)); err != nil {
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
		return nil
	}
	if err := lookPath6(ip6); err != nil {
		return err
	}
	f.v6, f.v6Probed = true, true
	return install(ip6, Render6(st), jumpsFor(true))
}

// install swaps r into tartan's chains with one restore of the iptables
// command given (iptables-nft, ip6tables-legacy, ...), then puts the jumps
// in place.
func install(iptables string, r Rules, jumps []jump) error {
	in := restoreInput(r)
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, iptables+"-restore", "-w", "5", "--noflush")
	cmd.Stdin = in
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s-restore: %w: %s", iptables, err, strings.TrimSpace(string(out)))
	}
	for _, j := range jumps {
		if err := ensureJump(iptables, j); err != nil {
			return err
		}
	}
	return nil
}

// restoreInput is the iptables-restore input that flushes tartan's chains
// (making them where missing) and fills them with r.
func restoreInput(r Rules) *bytes.Buffer {
	var in bytes.Buffer
	table := ""
	for _, c := range layout(r) {
		if c.table != table {
			if table != "" {
				in.WriteString("COMMIT\n")
			}
			table = c.table
			fmt.Fprintf(&in, "*%s\n", table)
		}
		writeChain(&in, c.chain, c.rules)
	}
	in.WriteString("COMMIT\n")
	return &in
}

// lookPath6 says clearly which ip6tables command is missing.
func lookPath6(ip6 string) error {
	for _, c := range []string{ip6, ip6 + "-restore"} {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("%s not found: the plugin image must include it for IPv6 networks: %w", c, err)
		}
	}
	return nil
}

// leftover6 says whether ip6tables has tartan's chains, left by an earlier
// run. It creates no tables: legacy ones are looked at only where loaded.
func leftover6(ip6 string) bool {
	if _, err := exec.LookPath(ip6); err != nil {
		return false
	}
	if strings.Contains(ip6, "legacy") {
		b, err := os.ReadFile("/proc/net/ip6_tables_names")
		if err != nil || strings.TrimSpace(string(b)) == "" {
			return false
		}
	}
	return run(ip6, "-w", "5", "-t", "filter", "-S", ForwardChain) == nil
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

// check compares the chains and jumps of one iptables command with r.
func check(iptables string, r Rules, jumps []jump) ([]string, error) {
	var out []string
	for _, c := range layout(r) {
		listing, err := output(iptables, "-w", "5", "-t", c.table, "-S", c.chain)
		if err != nil {
			out = append(out, fmt.Sprintf("chain %s of table %s is missing (%s)", c.chain, c.table, iptables))
			continue
		}
		if n := strings.Count("\n"+listing, "\n-A "); n != len(c.rules) {
			out = append(out, fmt.Sprintf("chain %s of table %s has %d rules, tartan's rule set has %d (%s)", c.chain, c.table, n, len(c.rules), iptables))
		}
	}
	for _, j := range jumps {
		listing, err := output(iptables, "-w", "5", "-t", j.table, "-S", j.builtin)
		if err != nil {
			return nil, fmt.Errorf("%s -t %s -S %s: %w: %s", iptables, j.table, j.builtin, err, listing)
		}
		rule := "-A " + j.builtin + " " + strings.Join(j.spec, " ")
		if have := rulePositions(listing, rule); len(have) != 1 || have[0] != JumpPosition(listing, j.after) {
			out = append(out, fmt.Sprintf("the jump %q in table %s is missing, doubled or out of place (%s)", rule, j.table, iptables))
		}
	}
	return out, nil
}

func writeChain(b *bytes.Buffer, chain string, rules []string) {
	fmt.Fprintf(b, ":%s - [0:0]\n-F %s\n", chain, chain)
	for _, r := range rules {
		b.WriteString(r + "\n")
	}
}

// ensureJump makes the jump exist once, right below the jump to j.after
// when the built-in chain has one, else first.
func ensureJump(iptables string, j jump) error {
	out, err := output(iptables, "-w", "5", "-t", j.table, "-S", j.builtin)
	if err != nil {
		return fmt.Errorf("%s -t %s -S %s: %w: %s", iptables, j.table, j.builtin, err, out)
	}
	want := JumpPosition(out, j.after)
	rule := "-A " + j.builtin + " " + strings.Join(j.spec, " ")
	if have := rulePositions(out, rule); len(have) == 1 && have[0] == want {
		return nil
	} else if len(have) > 0 {
		for range have {
			if err := run(iptables, append([]string{"-w", "5", "-t", j.table, "-D", j.builtin}, j.spec...)...); err != nil {
				return fmt.Errorf("%s: move the jump to %s: %w", iptables, j.spec[len(j.spec)-1], err)
			}
		}
		out, _ = output(iptables, "-w", "5", "-t", j.table, "-S", j.builtin)
		want = JumpPosition(out, j.after)
	}
	args := append([]string{"-w", "5", "-t", j.table, "-I", j.builtin, fmt.Sprint(want)}, j.spec...)
	if out, err := output(iptables, args...); err != nil {
		return fmt.Errorf("%s %s: %w: %s", iptables, strings.Join(args, " "), err, out)
	}
	return nil
}

// JumpPosition is the rule number (from 1) a jump goes to in a built-in
// chain listed by iptables -S: right below the jump to after, or first.
func JumpPosition(listing, after string) int {
	if after != "" {
		if p := rulePositions(listing, "-j "+after); len(p) > 0 {
			return p[0] + 1
		}
	}
	return 1
}

// rulePositions returns the rule numbers of the lines of an iptables -S
// listing that are rule, or (when rule starts with "-j ") that jump there.
func rulePositions(listing, rule string) []int {
	var out []int
	n := 0
	for _, l := range strings.Split(listing, "\n") {
		l = strings.TrimSpace(l)
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		n++
		if l == rule || (strings.HasPrefix(rule, "-j ") && strings.HasSuffix(l, " "+rule) && strings.Count(l, " ") == 3) {
			out = append(out, n)
		}
	}
	return out
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
	if err != nil {
		return err
	}
	f.removed = true
	return nil
}

// removeWith deletes tartan's jumps and chains with one iptables command,
// of the address family v6 says.
func removeWith(iptables string, v6 bool) error {
	for _, j := range jumpsFor(v6) {
		for run(iptables, append([]string{"-w", "5", "-t", j.table, "-D", j.builtin}, j.spec...)...) == nil {
		}
	}
	var errs []string
	for _, c := range layout(Rules{}) {
		_ = run(iptables, "-w", "5", "-t", c.table, "-F", c.chain)
		if out, err := output(iptables, "-w", "5", "-t", c.table, "-X", c.chain); err != nil && !strings.Contains(out, "No chain") && !strings.Contains(out, "does not exist") {
			errs = append(errs, fmt.Sprintf("%s -X %s: %s", iptables, c.chain, out))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove tartan's chains: %s", strings.Join(errs, "; "))
	}
	return nil
}

func run(name string, args ...string) error {
	_, err := output(name, args...)
	return err
}

func output(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
