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
	return writeSysctl(filepath.Join(root, strings.ReplaceAll(name, ".", "/")), value, "sysctl "+name+"="+value)
}

// writeSysctl writes value to a sysctl file unless it holds it already;
// what names the setting in the error.
func writeSysctl(path, value, what string) error {
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// EnableIPv6 turns IPv6 on for one interface (a host may default to it
// off for new ones). Interface names may hold dots, so the path is built
// here rather than from a dotted sysctl name.
func EnableIPv6(root, ifname string) error {
	return writeSysctl(filepath.Join(root, "net", "ipv6", "conf", ifname, "disable_ipv6"), "0", "enable IPv6 on "+ifname)
}
