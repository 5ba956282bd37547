package firewall

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/e2e/testbed"
)

const inNetns = "TARTAN_FIREWALL_TEST_IN_NETNS"

// TestMain runs the package's tests in a network namespace of their own when
// root (the flavour test writes real rules).
func TestMain(m *testing.M) {
	os.Exit(testbed.MainInOwnNetns(m, inNetns))
}

func sh(t *testing.T, cmd string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return string(out)
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
	sh(t, "iptables-legacy -N DOCKER-USER && iptables-legacy -A FORWARD -j DOCKER-USER && iptables-legacy -P FORWARD DROP")
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	if f.Flavour() != "iptables-legacy" {
		t.Fatalf("after Docker made its chains in legacy: %s", f.Flavour())
	}
	fwd := sh(t, "iptables-legacy -S FORWARD")
	if !strings.Contains(fwd, "-A FORWARD -j DOCKER-USER\n-A FORWARD -j "+ForwardChain) {
		t.Fatalf("legacy FORWARD:\n%s", fwd)
	}
	if nft := sh(t, "iptables-nft-save"); strings.Contains(nft, "TARTAN") {
		t.Fatalf("rules left in the nft tables:\n%s", nft)
	}
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	if left := sh(t, "iptables-legacy-save"); strings.Contains(left, "TARTAN") {
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
	f, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Apply(st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Remove() })
	ipt := f.Flavour()
	if got, err := f.Check(st); err != nil || len(got) != 0 {
		t.Fatalf("check right after apply: %v %v", got, err)
	}
	sh(t, ipt+" -t nat -F "+DNATChain+" && "+ipt+" -D INPUT -j "+InputChain+" && "+ipt+" -t mangle -D "+IsolateChain+" 1")
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
