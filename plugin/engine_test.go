package plugin

import (
	"strings"
	"testing"
)

func TestEngineWarning(t *testing.T) {
	for v, warn := range map[string]bool{
		"29.0.0": true, "29.0.2": true, "29.0.3": false, "29.1.0": false, "28.5.2+dfsg4": false,
		"20.10.24+dfsg1": false, "29.x-moby-v2.0.0-beta.24": false, "29.0.1-rc.1": true, "30.0.0": false, "banana": false,
	} {
		got := engineWarning(v)
		if (got != "") != warn {
			t.Errorf("engineWarning(%q) = %q, want a warning: %v", v, got, warn)
		}
		if warn && !strings.Contains(got, "29.0.3") {
			t.Errorf("engineWarning(%q) = %q does not name the fix", v, got)
		}
	}
}
