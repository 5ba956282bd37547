package fastpath

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/internal/testkit"
)

// asPlugin marks the test binary re-executed with the plugin's capabilities.
const asPlugin = "TARTAN_TEST_AS_PLUGIN"

// TestLoadsWithThePluginsCapabilities loads the programs in a process that
// has only the capabilities config.json gives the plugin (CAP_NET_ADMIN,
// CAP_BPF): the verifier is stricter without CAP_PERFMON or CAP_SYS_ADMIN
// (it refused variable-offset packet pointers, which root's load took).
func TestLoadsWithThePluginsCapabilities(t *testing.T) {
	if os.Getenv(asPlugin) != "" {
		log := logrus.New()
		log.SetOutput(io.Discard)
		f, err := Load(log)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return
	}
	testkit.RequireRoot(t, "setpriv")
	caps, err := pluginCapabilities()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", append([]string{"--bounding-set=-all," + caps, "--inh-caps=-all"}, testkit.Self("-test.run=^TestLoadsWithThePluginsCapabilities$", "-test.v")...)...)
	cmd.Env = append(os.Environ(), asPlugin+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("with only %s: %v\n%s", caps, err, out)
	}
	// The child really ran without the others: its bounding set says so.
	check := exec.Command("setpriv", "--bounding-set=-all,"+caps, "--inh-caps=-all", "grep", "CapEff", "/proc/self/status")
	if eff, err := check.CombinedOutput(); err != nil || strings.Contains(string(eff), "000001ffffffffff") {
		t.Fatalf("setpriv did not drop capabilities: %v %s", err, eff)
	}
}

// pluginCapabilities are config.json's linux.capabilities in setpriv's
// form (+net_admin,+bpf).
func pluginCapabilities() (string, error) {
	b, err := os.ReadFile("../../config.json")
	if err != nil {
		return "", err
	}
	var cfg struct {
		Linux struct {
			Capabilities []string `json:"capabilities"`
		} `json:"linux"`
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return "", fmt.Errorf("config.json: %w", err)
	}
	var caps []string
	for _, c := range cfg.Linux.Capabilities {
		caps = append(caps, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
	}
	if len(caps) == 0 {
		return "", fmt.Errorf("config.json gives the plugin no capabilities")
	}
	return strings.Join(caps, ","), nil
}
