package firewall

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/internal/testkit"
)

const inNetns = "TARTAN_FIREWALL_TEST_IN_NETNS"

// TestMain runs the package's tests in a network namespace of their own when
// root (the flavour test writes real rules).
func TestMain(m *testing.M) {
	os.Exit(testkit.MainInOwnNetns(m, inNetns))
}

// applied is a firewall that applied st (removed at cleanup), checked to
// hold exactly st's rules.
func applied(t *testing.T, st State) *Firewall {
	t.Helper()
	f, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Remove() })
	if got, err := f.Check(st); err != nil || len(got) != 0 {
		t.Fatalf("check right after apply: %v %v", got, err)
	}
	return f
}

// At boot a managed plugin starts before Docker makes its chains;
// tartan picked nft once and for good, so on a host where Docker uses
// iptables-legacy its rules sat in the wrong tables while Docker's DROP
// policy held in legacy. The flavour is found again on every apply, and the
// rules move with it.
func TestFlavourFollowsDocker(t *testing.T) {
	if os.Getenv(inNetns) == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("the flavour test needs root and unshare (a network namespace of its own)")
		}
		t.Skip("SKIPPED (not in CI): needs root and unshare")
	}
	for _, f := range []string{"iptables-nft", "iptables-legacy"} {
		if _, err := exec.LookPath(f); err != nil {
			t.Fatalf("%s is not installed (apt-get install iptables)", f)
		}
	}
	st := State{Pools: []Pool{{Pool: netip.MustParsePrefix("10.244.0.0/16")}}}
	f, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	if f.Flavour() != "iptables-nft" {
		t.Fatalf("before Docker's chains: %s, want iptables-nft", f.Flavour())
	}
	// Docker starts, with legacy iptables.
	testkit.Sh(t, "iptables-legacy -N DOCKER-USER && iptables-legacy -A FORWARD -j DOCKER-USER && iptables-legacy -P FORWARD DROP")
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	if f.Flavour() != "iptables-legacy" {
		t.Fatalf("after Docker made its chains in legacy: %s", f.Flavour())
	}
	fwd := testkit.Sh(t, "iptables-legacy -S FORWARD")
	if !strings.Contains(fwd, "-A FORWARD -j DOCKER-USER\n-A FORWARD -j "+ForwardChain) {
		t.Fatalf("legacy FORWARD:\n%s", fwd)
	}
	if nft := testkit.Sh(t, "iptables-nft-save"); strings.Contains(nft, "TARTAN") {
		t.Fatalf("rules left in the nft tables:\n%s", nft)
	}
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	if left := testkit.Sh(t, "iptables-legacy-save"); strings.Contains(left, "TARTAN") {
		t.Fatalf("rules left after Remove:\n%s", left)
	}
}

// Check: nothing after an apply; a rule deleted by hand, a chain flushed
// and a jump removed are each reported; nothing again after the next apply.
func TestCheck(t *testing.T) {
	if os.Getenv(inNetns) == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("the check test needs root and unshare (a network namespace of its own)")
		}
		t.Skip("SKIPPED (not in CI): needs root and unshare")
	}
	st := State{Pools: []Pool{{Pool: netip.MustParsePrefix("10.244.0.0/16"), Device: "tartan.256"}}, VXLANPort: 8472, Peers: []netip.Addr{netip.MustParseAddr("10.98.0.12")},
		Ports: []Port{{Proto: "tcp", HostPort: 18080, IP: netip.MustParseAddr("10.244.0.2"), Port: 80}}}
	f := applied(t, st)
	ipt := f.Flavour()
	testkit.Sh(t, ipt+" -t nat -F "+DNATChain+" && "+ipt+" -D INPUT -j "+InputChain+" && "+ipt+" -t mangle -D "+IsolateChain+" 1")
	got, err := f.Check(st)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(got, "\n")
	for _, want := range []string{"chain " + DNATChain + " of table nat has 0 rules, tartan's rule set has 1", "chain " + IsolateChain + " of table mangle has",
		`the jump "-A INPUT -j ` + InputChain + `" in table filter is missing`} {
		if !strings.Contains(all, want) {
			t.Fatalf("check does not say %q:\n%s", want, all)
		}
	}
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	if got, err := f.Check(st); err != nil || len(got) != 0 {
		t.Fatalf("check after the repair: %v %v", got, err)
	}
}

// Dual-stack networks: the IPv6 pools' rules go to ip6tables of the same
// flavour, are checked and removed with the IPv4 ones, and go when no IPv6
// pool is left, also after a plugin restart (a fresh Firewall).
func TestDualStack(t *testing.T) {
	if os.Getenv(inNetns) == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("the dual-stack test needs root and unshare (a network namespace of its own)")
		}
		t.Skip("SKIPPED (not in CI): needs root and unshare")
	}
	for _, c := range []string{"ip6tables-nft", "ip6tables-legacy"} {
		if _, err := exec.LookPath(c); err != nil {
			t.Fatalf("%s is not installed (apt-get install iptables)", c)
		}
	}
	v4 := Pool{Pool: netip.MustParsePrefix("10.244.0.0/16"), Device: "tartan.256"}
	v6 := Pool{Pool: netip.MustParsePrefix("fd00:a::/64"), Device: "tartan.256", NAT66: true}
	st4 := State{Pools: []Pool{v4}, VXLANPort: 8472, Peers: []netip.Addr{netip.MustParseAddr("10.98.0.12")},
		Ports: []Port{{Proto: "tcp", HostPort: 18080, IP: netip.MustParseAddr("10.244.0.2"), Port: 80}}}
	st := st4
	st.Pools = []Pool{v4, v6}
	f, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	ipt := f.Flavour()
	ip6 := ip6Of(ipt)
	t.Logf("flavour: %s, %s", ipt, ip6)
	t.Cleanup(func() { _ = removeWith(ipt, false); _ = removeWith(ip6, true) })
	if got, err := f.Check(st); err != nil || len(got) != 0 {
		t.Fatalf("check right after apply: %v %v", got, err)
	}
	save4, save6 := testkit.Sh(t, ipt+"-save"), testkit.Sh(t, ip6+"-save")
	if strings.Contains(save4, "fd00:a::") || !strings.Contains(save4, "-A "+IsolateChain+" -d 10.244.0.0/16 -j DROP") {
		t.Fatalf("%s-save:\n%s", ipt, save4)
	}
	for _, want := range []string{"-A " + IsolateChain + " ! -s fd00:a::/64 -i tartan.256 -j DROP", "-A " + PostroutingChain + " -s fd00:a::/64 ! -d fd00:a::/64 -j MASQUERADE",
		"-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j " + DNATChain, "-A FORWARD -j " + ForwardChain} {
		if !strings.Contains(save6, want) {
			t.Fatalf("no %q in %s-save:\n%s", want, ip6, save6)
		}
	}
	if strings.Contains(save6, "10.244.") || strings.Contains(save6, "8472") {
		t.Fatalf("IPv4 rules in %s-save:\n%s", ip6, save6)
	}

	// Drift in ip6tables is reported as ip6tables'.
	testkit.Sh(t, ip6+" -t mangle -D "+IsolateChain+" 1 && "+ip6+" -D INPUT -j "+InputChain)
	got, err := f.Check(st)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(got, "\n")
	n := len(Render6(st).Isolate)
	for _, want := range []string{fmt.Sprintf("chain %s of table mangle has %d rules, tartan's rule set has %d (%s)", IsolateChain, n-1, n, ip6),
		`the jump "-A INPUT -j ` + InputChain + `" in table filter is missing, doubled or out of place (` + ip6 + ")"} {
		if !strings.Contains(all, want) {
			t.Fatalf("check does not say %q:\n%s", want, all)
		}
	}
	if len(got) != 2 {
		t.Fatalf("check says more than the drift:\n%s", all)
	}
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	if got, err := f.Check(st); err != nil || len(got) != 0 {
		t.Fatalf("check after the repair: %v %v", got, err)
	}

	// The IPv6 pool goes: so do the IPv6 rules, the IPv4 ones stay.
	if err := f.Apply(st4); err != nil {
		t.Fatal(err)
	}
	if s := testkit.Sh(t, ip6+"-save"); strings.Contains(s, "TARTAN") {
		t.Fatalf("IPv6 rules left without IPv6 pools:\n%s", s)
	}
	if got, err := f.Check(st4); err != nil || len(got) != 0 {
		t.Fatalf("IPv4 rules after the IPv6 pool went: %v %v", got, err)
	}

	// A restarted plugin's first apply without IPv6 pools removes the
	// IPv6 rules of the one before.
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	g, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Apply(st4); err != nil {
		t.Fatal(err)
	}
	if s := testkit.Sh(t, ip6+"-save"); strings.Contains(s, "TARTAN") {
		t.Fatalf("IPv6 rules left after a restart:\n%s", s)
	}

	// Remove takes both families away.
	if err := g.Apply(st); err != nil {
		t.Fatal(err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if s := testkit.Sh(t, ipt+"-save; "+ip6+"-save"); strings.Contains(s, "TARTAN") {
		t.Fatalf("rules left after Remove:\n%s", s)
	}
}

// Without ip6tables, an apply with IPv6 pools puts the IPv4 rules in place
// and says which command is missing.
func TestDualStackWithoutIP6tables(t *testing.T) {
	if os.Getenv(inNetns) == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("the dual-stack test needs root and unshare (a network namespace of its own)")
		}
		t.Skip("SKIPPED (not in CI): needs root and unshare")
	}
	path := os.Getenv("PATH")
	dir := t.TempDir()
	for _, c := range []string{"iptables-nft", "iptables-nft-restore", "iptables-legacy", "iptables-legacy-restore"} {
		p, err := exec.LookPath(c)
		if err != nil {
			t.Fatalf("%s is not installed (apt-get install iptables)", c)
		}
		if err := os.Symlink(p, filepath.Join(dir, c)); err != nil {
			t.Fatal(err)
		}
	}
	st := State{Pools: []Pool{{Pool: netip.MustParsePrefix("10.244.0.0/16")}, {Pool: netip.MustParsePrefix("fd00:a::/64")}}}
	t.Setenv("PATH", dir)
	f, err := New()
	if err != nil {
		t.Fatal(err)
	}
	err = f.Apply(st)
	ipt := f.Flavour()
	want := ip6Of(ipt) + " not found: the plugin image must include it"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("apply without %s: %v", ip6Of(ipt), err)
	}
	got, cerr := f.Check(st)
	if cerr != nil || len(got) != 1 || !strings.Contains(got[0], want) {
		t.Fatalf("check without %s: %q %v", ip6Of(ipt), got, cerr)
	}
	t.Setenv("PATH", path)
	t.Cleanup(func() { _ = removeWith(ipt, false) })
	if s := testkit.Sh(t, ipt+"-save"); !strings.Contains(s, "-A "+IsolateChain+" -d 10.244.0.0/16 -j DROP") {
		t.Fatalf("IPv4 rules not in place:\n%s", s)
	}
	if s := testkit.Sh(t, ip6Of(ipt)+"-save"); strings.Contains(s, "TARTAN") {
		t.Fatalf("IPv6 rules:\n%s", s)
	}
	t.Setenv("PATH", dir)
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", path)
	if s := testkit.Sh(t, ipt+"-save"); strings.Contains(s, "TARTAN") {
		t.Fatalf("rules left after Remove:\n%s", s)
	}
}
