package plugin

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/driver/vxlan"
	"github.com/tartan-net/tartan/driver/wireguard"
	"github.com/tartan-net/tartan/kv"
)

// Settings are the plugin's settings (docker plugin set tartan KEY=VALUE).
type Settings struct {
	Store     string // "" (embedded) or consul[+https]://host[:port][/prefix]
	Consul    *kv.ConsulConfig
	Advertise string
	Scope     string
	VXLANPort int
	LeaseTTL  time.Duration
	Resync    time.Duration
	// ClockSkew shifts this plugin's clock (CLOCK_SKEW, for tests): the
	// times it writes and reads are those of a machine whose clock is that
	// far off.
	ClockSkew  time.Duration
	LogLevel   logrus.Level
	AutoPool   netip.Prefix
	AutoBits   int
	StateDir   string
	SysctlRoot string
	// DockerSocket is the Docker API inside the plugin (config.json mounts
	// the host's socket there), for cluster-wide networks.
	DockerSocket string
	// Metrics is the address Prometheus metrics are served on ("": off).
	Metrics string
	// WireGuardPort is the UDP port of the host's WireGuard device;
	// WireGuardRotate, when it changes, makes the host a new key pair.
	WireGuardPort   int
	WireGuardRotate string
	// WireGuardMode is auto (the kernel's WireGuard where there is one),
	// kernel or userspace.
	WireGuardMode string
	// FastPath is auto (the eBPF fast path where the kernel takes it) or
	// off (the kernel path only).
	FastPath string
	// BGP is the BGP speaker's settings (nil: off).
	BGP *BGPSettings
}

// FastPath settings.
const (
	FastPathAuto = "auto"
	FastPathOff  = "off"
)

// defaults are the settings' values when unset. ParseSettings starts from
// them, so that even with an error it returns settings the plugin can run on
// (it then serves every request with that error).
func defaults() Settings {
	return Settings{StateDir: "/host/var/lib/tartan", SysctlRoot: "/host/proc/sys", DockerSocket: "/run/docker.sock", Scope: "local", VXLANPort: vxlan.DefaultPort, WireGuardPort: wireguard.DefaultPort, WireGuardMode: wireguard.ModeAuto, FastPath: FastPathAuto,
		LeaseTTL: kv.DefaultLeaseTTL, Resync: driver.DefaultResync, LogLevel: logrus.InfoLevel,
		AutoPool: netip.MustParsePrefix("10.240.0.0/12"), AutoBits: 24}
}

// ParseSettings reads the settings from env (os.Getenv in production). Each
// error names the setting and the fix.
func ParseSettings(env func(string) string) (Settings, error) {
	s := defaults()
	s.Advertise = strings.TrimSpace(env("ADVERTISE"))
	if v := env("STATE_DIR"); v != "" {
		s.StateDir = v
	}
	if v := env("SYSCTL_ROOT"); v != "" {
		s.SysctlRoot = v
	}
	if v := env("DOCKER_SOCKET"); v != "" {
		s.DockerSocket = v
	}
	s.Store = strings.TrimSpace(env("STORE"))
	if s.Store != "" {
		c, err := consulSettings(s.Store, env)
		if err != nil {
			return s, err
		}
		s.Consul = c
	}
	switch v := strings.TrimSpace(env("SCOPE")); v {
	case "", "local":
	case "global":
		s.Scope = "global"
	default:
		return s, fmt.Errorf("SCOPE=%s: use local or global", v)
	}
	if err := portSetting(env, "VXLAN_PORT", &s.VXLANPort, vxlan.DefaultPort); err != nil {
		return s, err
	}
	if err := portSetting(env, "WG_PORT", &s.WireGuardPort, wireguard.DefaultPort); err != nil {
		return s, err
	}
	if s.WireGuardPort == s.VXLANPort {
		return s, fmt.Errorf("WG_PORT=%d is VXLAN_PORT too: give WireGuard and VXLAN different UDP ports", s.WireGuardPort)
	}
	s.WireGuardRotate = strings.TrimSpace(env("WG_ROTATE"))
	switch v := strings.TrimSpace(env("WG_MODE")); v {
	case "", wireguard.ModeAuto:
	case wireguard.ModeKernel, wireguard.ModeUserspace:
		s.WireGuardMode = v
	default:
		return s, fmt.Errorf("WG_MODE=%s: use auto (the kernel's WireGuard where it has one, else user space), kernel or userspace", v)
	}
	switch v := strings.TrimSpace(env("FASTPATH")); v {
	case "", FastPathAuto:
	case FastPathOff:
		s.FastPath = v
	default:
		return s, fmt.Errorf("FASTPATH=%s: use auto (the eBPF fast path where the kernel takes it, else the kernel path) or off (the kernel path only)", v)
	}
	const year = 365 * 24 * time.Hour
	for _, d := range []struct {
		name string
		to   *time.Duration
		ok   func(time.Duration) bool
		use  string
	}{
		{"LEASE_TTL", &s.LeaseTTL, func(d time.Duration) bool { return d >= 10*time.Second }, "use a duration of at least 10s, such as 24h"},
		{"RESYNC", &s.Resync, func(d time.Duration) bool { return d >= time.Second && d <= time.Hour }, "use a duration from 1s to 1h, such as 30s"},
		{"CLOCK_SKEW", &s.ClockSkew, func(d time.Duration) bool { return d >= -year && d <= year },
			"use a duration within a year either way, such as 72h or -72h (for tests: a machine whose clock is that far off)"},
	} {
		if err := durationSetting(env, d.name, d.to, d.ok, d.use); err != nil {
			return s, err
		}
	}
	if v := strings.TrimSpace(env("LOG_LEVEL")); v != "" {
		l, err := logrus.ParseLevel(v)
		if err != nil {
			return s, fmt.Errorf("LOG_LEVEL=%s: use debug, info, warn or error", v)
		}
		s.LogLevel = l
	}
	if err := bgpSettings(env, &s); err != nil {
		return s, err
	}
	err := addressSettings(env, &s)
	return s, err
}

// consulSettings reads the Consul client's settings for STORE: its token
// (CONSUL_HTTP_TOKEN, or the file CONSUL_HTTP_TOKEN_FILE names) and its TLS
// files.
func consulSettings(store string, env func(string) string) (*kv.ConsulConfig, error) {
	c, err := ParseStore(store)
	if err != nil {
		return nil, err
	}
	c.Token = env("CONSUL_HTTP_TOKEN")
	// The token from a file keeps it out of docker plugin inspect
	// and out of every child's environment (issue 24, audit L4).
	if f := strings.TrimSpace(env("CONSUL_HTTP_TOKEN_FILE")); f != "" {
		if c.Token != "" {
			return nil, fmt.Errorf("CONSUL_HTTP_TOKEN and CONSUL_HTTP_TOKEN_FILE are both set: keep one (the file keeps the token out of docker plugin inspect)")
		}
		b, err := os.ReadFile(f)
		if err != nil || strings.TrimSpace(string(b)) == "" {
			return nil, fmt.Errorf("CONSUL_HTTP_TOKEN_FILE=%s: %v: put the token in a file the plugin sees, such as /var/lib/tartan/consul.token on the host (0600), and give its path inside: /host/var/lib/tartan/consul.token", f, cmp.Or(err, errors.New("the file is empty")))
		}
		c.Token = strings.TrimSpace(string(b))
	}
	c.CAFile, c.CertFile, c.KeyFile = env("CONSUL_CACERT"), env("CONSUL_CLIENT_CERT"), env("CONSUL_CLIENT_KEY")
	for name, f := range map[string]string{"CONSUL_CACERT": c.CAFile, "CONSUL_CLIENT_CERT": c.CertFile, "CONSUL_CLIENT_KEY": c.KeyFile} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				return nil, fmt.Errorf("%s=%s: %v: mount the file into the plugin and give its path inside", name, f, err)
			}
		}
	}
	if c.Scheme == "http" && (c.CAFile != "" || c.CertFile != "" || c.KeyFile != "") {
		return nil, fmt.Errorf("STORE=%s is plain HTTP but CONSUL_CACERT/CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY are set: use consul+https://… so that they are used (and the token is not sent in clear)", store)
	}
	return &c, nil
}

// portSetting reads a UDP port setting into *port, when set; dflt is the
// default the error names.
func portSetting(env func(string) string, name string, port *int, dflt int) error {
	v := strings.TrimSpace(env(name))
	if v == "" {
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("%s=%s: use a UDP port number from 1 to 65535 (default %d)", name, v, dflt)
	}
	*port = n
	return nil
}

// durationSetting reads a duration setting into *d, when set: one that does
// not parse, or that ok refuses, is an error saying use.
func durationSetting(env func(string) string, name string, d *time.Duration, ok func(time.Duration) bool, use string) error {
	v := strings.TrimSpace(env(name))
	if v == "" {
		return nil
	}
	x, err := time.ParseDuration(v)
	if err != nil || !ok(x) {
		return fmt.Errorf("%s=%s: %s", name, v, use)
	}
	*d = x
	return nil
}

// addressSettings reads the settings that are addresses: AUTO_POOL,
// METRICS and AUTO_POOL_SIZE.
func addressSettings(env func(string) string, s *Settings) error {
	if v := strings.TrimSpace(env("AUTO_POOL")); v != "" {
		p, err := netip.ParsePrefix(v)
		if err != nil || !p.Addr().Is4() || p.Masked() != p {
			return fmt.Errorf("AUTO_POOL=%s: use an IPv4 CIDR such as 10.240.0.0/12", v)
		}
		s.AutoPool = p
	}
	if v := strings.TrimSpace(env("METRICS")); v != "" {
		host, port, err := net.SplitHostPort(v)
		n, perr := strconv.Atoi(port)
		if err != nil || perr != nil || n < 1 || n > 65535 || (host != "" && net.ParseIP(host) == nil) {
			return fmt.Errorf("METRICS=%s: use an address and TCP port to serve /metrics on, such as 127.0.0.1:9323 or :9323 (the plugin runs in the host's network namespace), or leave it empty", v)
		}
		s.Metrics = v
	}
	if v := strings.TrimSpace(env("AUTO_POOL_SIZE")); v != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(v, "/"))
		if err != nil || n < s.AutoPool.Bits() || n > 30 {
			return fmt.Errorf("AUTO_POOL_SIZE=%s: use a prefix length from %d to 30", v, s.AutoPool.Bits())
		}
		s.AutoBits = n
	}
	return nil
}

// ParseStore reads a STORE URL: consul://host[:port][,host[:port]...][/prefix],
// or consul+https://... for TLS. Several hosts are servers (or agents) of one
// Consul cluster, tried in turn when one is unreachable.
func ParseStore(v string) (kv.ConsulConfig, error) {
	bad := fmt.Errorf("STORE=%s: use consul://host:8500[,host2:8500...][/prefix] (or consul+https://...), or leave it empty for the embedded single-host store", v)
	u, err := url.Parse(v)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return kv.ConsulConfig{}, bad
	}
	c := kv.ConsulConfig{Scheme: "http", Prefix: "tartan/"}
	switch u.Scheme {
	case "consul":
	case "consul+https":
		c.Scheme = "https"
	default:
		return kv.ConsulConfig{}, bad
	}
	for _, hp := range strings.Split(u.Host, ",") {
		host, port, err := net.SplitHostPort(hp)
		if err != nil {
			host, port = hp, "8500"
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
			return kv.ConsulConfig{}, bad
		}
		c.Addresses = append(c.Addresses, net.JoinHostPort(host, port))
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		c.Prefix = p + "/"
	}
	return c, nil
}
