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
// Router advertisements and address autoconfiguration go off on it first:
// a container's advertisement must not give the host a default route via
// the container (a host whose default accept_ra is 2; issue 24, audit L7).
func EnableIPv6(root, ifname string) error {
	conf := filepath.Join(root, "net", "ipv6", "conf", ifname)
	for _, s := range []string{"accept_ra", "autoconf"} {
		if err := writeSysctl(filepath.Join(conf, s), "0", s+"=0 on "+ifname); err != nil {
			return err
		}
	}
	return writeSysctl(filepath.Join(conf, "disable_ipv6"), "0", "enable IPv6 on "+ifname)
}
