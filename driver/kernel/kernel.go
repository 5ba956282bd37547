// Package kernel is tartan's only netlink user. Every call is ensure-or-adopt
// and every delete of a missing object succeeds, so that a plugin that was
// killed half-way can run the same calls again.
package kernel

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Sysctl sets a sysctl under root (the host's /proc/sys mounted into the
// plugin, or /proc/sys itself). A missing or read-only tree is reported.
func Sysctl(root, name, value string) error {
	path := filepath.Join(root, strings.ReplaceAll(name, ".", "/"))
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
