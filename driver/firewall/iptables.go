package firewall

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// commandTimeout bounds every iptables run: a stuck xtables lock must not
// hang the plugin.
const commandTimeout = 20 * time.Second

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
	out := []chainRules{{"filter", ForwardChain, r.Forward}, {"filter", InputChain, r.Input}}
	// Network policy's chains exist while they have rules (unused ones are
	// removed after the restore: policyLeftovers), before TARTAN-ISOLATE,
	// which jumps to them.
	for _, c := range []chainRules{{"mangle", EgressChain, r.Egress}, {"mangle", IngressChain, r.Ingress}} {
		if len(c.rules) > 0 {
			out = append(out, c)
		}
	}
	return append(out, chainRules{"mangle", IsolateChain, r.Isolate}, chainRules{"nat", PostroutingChain, r.Postrouting}, chainRules{"nat", DNATChain, r.DNAT},
		chainRules{"raw", RawChain, r.Raw}, chainRules{"raw", RawOutputChain, r.RawOutput})
}

// allChains is every chain tartan may own, for its removal.
func allChains() []chainRules {
	return layout(Rules{Egress: []string{""}, Ingress: []string{""}})
}

// policyLeftovers removes network policy's chains that r has no rules for
// (the jumps to them went with the restore's TARTAN-ISOLATE).
func policyLeftovers(iptables string, r Rules) {
	for _, c := range []chainRules{{"mangle", EgressChain, r.Egress}, {"mangle", IngressChain, r.Ingress}} {
		if len(c.rules) == 0 {
			_ = run(iptables, "-w", "5", "-t", c.table, "-F", c.chain)
			_ = run(iptables, "-w", "5", "-t", c.table, "-X", c.chain)
		}
	}
}

// ip6Of names the ip6tables command of an iptables flavour:
// iptables-nft -> ip6tables-nft, iptables-legacy -> ip6tables-legacy.
func ip6Of(iptables string) string {
	return "ip6tables" + strings.TrimPrefix(iptables, "iptables")
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
	policyLeftovers(iptables, r)
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

// removeWith deletes tartan's jumps and chains with one iptables command,
// of the address family v6 says.
func removeWith(iptables string, v6 bool) error {
	for _, j := range jumpsFor(v6) {
		for run(iptables, append([]string{"-w", "5", "-t", j.table, "-D", j.builtin}, j.spec...)...) == nil {
		}
	}
	var errs []string
	for _, c := range allChains() { // every chain emptied first: a chain jumped to is deleted only once nothing jumps to it
		_ = run(iptables, "-w", "5", "-t", c.table, "-F", c.chain)
	}
	for _, c := range allChains() {
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
