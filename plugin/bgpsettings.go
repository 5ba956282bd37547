package plugin

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver/bgp/speaker"
	"github.com/tartan-net/tartan/driver/kernel"
)

// BGPSettings are the BGP speaker's settings (BGP_*); nil in Settings
// when BGP_AS is unset (BGP off).
type BGPSettings struct {
	AS    uint32
	Peers []speaker.Peer
	// RouterID is BGP_ROUTER_ID (invalid: this host's underlay address).
	RouterID netip.Addr
	// HoldTime, Keepalive and RestartTime are BGP_HOLD_TIME,
	// BGP_KEEPALIVE and BGP_RESTART_TIME (0: no graceful restart).
	HoldTime, Keepalive, RestartTime time.Duration
}

// BGP's defaults: the timers BIRD and FRR start from (hold 90 s, keepalive
// a third of it), and a restart time that covers a plugin upgrade.
const (
	defaultBGPHold    = 90 * time.Second
	defaultBGPRestart = 120 * time.Second
)

// bgpSettings reads the BGP_* settings into s.BGP; each error names the
// setting and the fix.
func bgpSettings(env func(string) string, s *Settings) error {
	asText := strings.TrimSpace(env("BGP_AS"))
	peers := strings.TrimSpace(env("BGP_PEERS"))
	if asText == "" {
		for _, k := range []string{"BGP_PEERS", "BGP_ROUTER_ID", "BGP_HOLD_TIME", "BGP_KEEPALIVE", "BGP_RESTART_TIME"} {
			if strings.TrimSpace(env(k)) != "" {
				return fmt.Errorf("%s is set but BGP_AS is not: set this host's AS number too (BGP_AS=64512), or unset %s", k, k)
			}
		}
		return nil
	}
	as, err := asNumber(asText)
	if err != nil {
		return fmt.Errorf("BGP_AS=%s: %v", asText, err)
	}
	b := &BGPSettings{AS: as, HoldTime: defaultBGPHold, RestartTime: defaultBGPRestart}
	if peers == "" {
		return fmt.Errorf("BGP_AS=%s is set but BGP_PEERS is not: name this host's routers as ADDRESS:AS, several comma-separated (BGP_PEERS=10.0.0.1:64500,[fd00::1]:64500)", asText)
	}
	seen := map[netip.Addr]bool{}
	for _, p := range strings.Split(peers, ",") {
		peer, err := bgpPeer(strings.TrimSpace(p))
		if err != nil {
			return fmt.Errorf("BGP_PEERS=%s: %v", peers, err)
		}
		if seen[peer.Addr] {
			return fmt.Errorf("BGP_PEERS=%s: %s is named twice: name each router once", peers, peer.Addr)
		}
		seen[peer.Addr] = true
		b.Peers = append(b.Peers, peer)
	}
	if v := strings.TrimSpace(env("BGP_ROUTER_ID")); v != "" {
		id, err := netip.ParseAddr(v)
		if err != nil || !id.Is4() || id.IsUnspecified() {
			return fmt.Errorf("BGP_ROUTER_ID=%s: use an IPv4 address unique among the BGP speakers (default: this host's underlay address)", v)
		}
		b.RouterID = id
	}
	if err := durationSetting(env, "BGP_HOLD_TIME", &b.HoldTime, func(d time.Duration) bool {
		return d >= 3*time.Second && d <= 65535*time.Second && d%time.Second == 0
	}, "use whole seconds from 3s to 65535s, such as 90s (the BGP hold time this host offers; the smaller of the two sides wins)"); err != nil {
		return err
	}
	b.Keepalive = b.HoldTime / 3 / time.Second * time.Second
	if err := durationSetting(env, "BGP_KEEPALIVE", &b.Keepalive, func(d time.Duration) bool {
		return d >= time.Second && d < b.HoldTime && d%time.Second == 0
	}, fmt.Sprintf("use whole seconds from 1s to less than the hold time (%s), such as a third of it", b.HoldTime)); err != nil {
		return err
	}
	if err := durationSetting(env, "BGP_RESTART_TIME", &b.RestartTime, func(d time.Duration) bool {
		return d >= 0 && d <= 4095*time.Second && d%time.Second == 0
	}, "use whole seconds up to 4095s, such as 120s (how long the routers keep this host's routes while the plugin restarts), or 0s for no graceful restart"); err != nil {
		return err
	}
	s.BGP = b
	return nil
}

// asNumber reads an AS number: 1 to 4294967295, not AS_TRANS (23456).
func asNumber(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	switch {
	case err != nil || n == 0:
		return 0, fmt.Errorf("use an AS number from 1 to 4294967295, such as a private one from 64512 to 65534")
	case n == 23456:
		return 0, fmt.Errorf("23456 is AS_TRANS, reserved: use another AS number, such as a private one from 64512 to 65534")
	}
	return uint32(n), nil
}

// bgpPeer reads one router: ADDRESS:AS, [IPV6]:AS.
func bgpPeer(v string) (speaker.Peer, error) {
	host, as, err := net.SplitHostPort(v)
	if err != nil {
		return speaker.Peer{}, fmt.Errorf("%q is not ADDRESS:AS: name each router by its address and AS, such as 10.0.0.1:64500 or [fd00::1]:64500", v)
	}
	addr, err := netip.ParseAddr(host)
	if err != nil || addr.Zone() != "" || !addr.IsGlobalUnicast() {
		return speaker.Peer{}, fmt.Errorf("%q: %s is not a router's unicast address", v, host)
	}
	n, err := asNumber(as)
	if err != nil {
		return speaker.Peer{}, fmt.Errorf("%q: AS %s: %v", v, as, err)
	}
	return speaker.Peer{Addr: addr.Unmap(), AS: n}, nil
}

// startBGP starts this host's BGP speaker (nil when BGP is off); its router
// ID is the underlay's address unless BGP_ROUTER_ID names one.
func startBGP(ctx context.Context, s Settings, log logrus.FieldLogger) (*speaker.Speaker, error) {
	b := s.BGP
	if b == nil {
		return nil, nil
	}
	id := b.RouterID
	if !id.IsValid() {
		u, err := kernel.FindUnderlay(s.Advertise)
		if err != nil || !u.Address.Is4() {
			return nil, fmt.Errorf("BGP: no router ID: this host's underlay has no IPv4 address (%v): set BGP_ROUTER_ID", err)
		}
		id = u.Address
	}
	return speaker.Start(ctx, speaker.Config{AS: b.AS, RouterID: id, Peers: b.Peers, HoldTime: b.HoldTime,
		Keepalive: b.Keepalive, RestartTime: b.RestartTime, Log: log})
}
