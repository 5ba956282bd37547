package fastpath

import (
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/internal/testkit"
)

// inNetns marks the test binary run again in a network namespace of its
// own (TestMain): Sync attaches programs to interfaces.
const inNetns = "TARTAN_TEST_FASTPATH_NETNS"

func TestMain(m *testing.M) { os.Exit(testkit.MainInOwnNetns(m, inNetns)) }

// Issue 29: tartan doctor names a fast-path entry or attachment that
// differs from what the next write makes (here an endpoint's entry deleted
// and its program detached by hand), and Sync repairs both.
func TestFastPathDrift(t *testing.T) {
	testkit.Require(t, os.Getenv(inNetns) != "", "needs root: it runs in a network namespace of its own")
	if out, err := exec.Command("sh", "-c", "ip link set lo up && ip link add tfp0 type veth peer name tfp1 && ip link set tfp0 up && ip link set tfp1 up").CombinedOutput(); err != nil {
		t.Fatalf("veth: %v %s", err, out)
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	f, err := Load(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st := State{Networks: []Network{{ID: "n1", Pools: []netip.Prefix{netip.MustParsePrefix("10.251.0.0/24")}}},
		Endpoints: []Endpoint{{Network: "n1", HostIf: "tfp0", IP: netip.MustParseAddr("10.251.0.5"), MAC: "02:42:0a:fb:00:05"}}}
	if err := f.Sync(st); err != nil {
		t.Fatal(err)
	}
	if d, err := f.Drift(st); err != nil || len(d) != 0 {
		t.Fatalf("drift right after Sync: %v %v", d, err)
	}
	if err := f.objs.Endpoints.Delete(uint32(f.links["tfp0"].ifindex)); err != nil {
		t.Fatal(err)
	}
	_ = f.links["tfp0"].link.Close()
	delete(f.links, "tfp0")
	d, err := f.Drift(st)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(d, "\n")
	for _, want := range []string{"the fast path's endpoint entry for tfp0 is missing", "the fast path's program is not attached to tfp0"} {
		if !strings.Contains(got, want) {
			t.Fatalf("drift does not say %q:\n%s", want, got)
		}
	}
	if err := f.Sync(st); err != nil {
		t.Fatal(err)
	}
	if d, err := f.Drift(st); err != nil || len(d) != 0 {
		t.Fatalf("drift after the repair: %v %v", d, err)
	}
}
