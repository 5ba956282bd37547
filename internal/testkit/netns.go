package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// NS is a network namespace the test made.
type NS struct {
	Name string
}

// Path is the namespace's file for nsenter --net.
func (n NS) Path() string { return "/run/netns/" + n.Name }

// NewNS makes a namespace with lo up, deleted at cleanup (which also removes
// every link inside it).
// Names start with "tt-"; TARTAN_E2E_PREFIX replaces it, so that two runs
// (Docker 20.10 and Docker 26, as make test does) can share the machine.
func NewNS(t testing.TB, name string) NS {
	t.Helper()
	if p := os.Getenv("TARTAN_E2E_PREFIX"); p != "" {
		name = p + strings.TrimPrefix(name, "tt-")
	}
	_ = exec.Command("ip", "netns", "del", name).Run() // a leftover of a killed run
	forget := RecordNS(name)
	MustRun(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", name).Run()
		forget()
	})
	ns := NS{Name: name}
	ns.MustIP(t, "link", "set", "lo", "up")
	return ns
}

// IP runs "ip" inside the namespace.
func (n NS) IP(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"-n", n.Name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip -n %s %s: %w: %s", n.Name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustIP is IP that fails the test on error.
func (n NS) MustIP(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.IP(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Exec runs a command inside the namespace (network only; mounts untouched).
func (n NS) Exec(name string, args ...string) (string, error) {
	out, err := n.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s %s: %w: %s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustExec is Exec that fails the test on error.
func (n NS) MustExec(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := n.Exec(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Command is a command to run inside the namespace, for one the test
// starts and stops itself (a capture).
func (n NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + n.Path(), name}, args...)...)
}

// Link joins two namespaces with a veth pair and addresses each end.
func Link(t testing.TB, a NS, aIf, aAddr string, b NS, bIf, bAddr string, mtu int) {
	t.Helper()
	MustRun(t, "ip", "link", "add", aIf, "mtu", fmt.Sprint(mtu), "netns", a.Name, "type", "veth", "peer", "name", bIf, "mtu", fmt.Sprint(mtu), "netns", b.Name)
	a.MustIP(t, "addr", "add", aAddr, "dev", aIf)
	a.MustIP(t, "link", "set", aIf, "up")
	b.MustIP(t, "addr", "add", bAddr, "dev", bIf)
	b.MustIP(t, "link", "set", bIf, "up")
}
