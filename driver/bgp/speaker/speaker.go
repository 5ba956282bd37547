// Package speaker is this host's BGP speaker (GoBGP as a library): it
// announces the prefixes it is handed to the host's BGP peers (the
// datacenter's routers) and nothing else, never re-announces what it
// learns, and listens on no port (it connects to its peers).
//
// Graceful restart is on: a plugin that restarts or is upgraded leaves its
// routes in the kernel, and its peers keep routing to this host for the
// restart time while the new process comes back and announces them again.
// The peers are added only once the first full set of prefixes is known
// (Announce), so that the first UPDATEs a peer sees after a restart are the
// whole set and its End-of-RIB takes away only what is really gone.
package speaker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/sirupsen/logrus"
)

// Peer is a BGP neighbour: its address and AS (Port 0 is BGP's 179).
type Peer struct {
	Addr netip.Addr
	AS   uint32
	Port uint16
}

func (p Peer) String() string { return fmt.Sprintf("%s (AS %d)", p.Addr, p.AS) }

// Config is the speaker's configuration (the plugin's BGP_* settings).
type Config struct {
	AS       uint32
	RouterID netip.Addr // IPv4
	Peers    []Peer
	// HoldTime and Keepalive are the timers this host offers (the peer's
	// smaller hold time wins); RestartTime is how long a peer keeps this
	// host's routes while the plugin restarts (0: no graceful restart).
	HoldTime, Keepalive, RestartTime time.Duration
	Log                              logrus.FieldLogger
}

// Route is a prefix this host announces and its next hop (this host's
// address on the peers' network, of the prefix's family).
type Route struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
}

// Speaker is a running BGP speaker.
type Speaker struct {
	cfg Config
	s   *server.BgpServer

	mu        sync.Mutex // what follows
	announced map[netip.Prefix]netip.Addr
	added     map[netip.Addr]bool // the peers added (from the first Announce on)
}

// Start starts the speaker; its peers are added by the first Announce.
func Start(ctx context.Context, cfg Config) (*Speaker, error) {
	if cfg.Log == nil {
		cfg.Log = logrus.StandardLogger()
	}
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelInfo)
	s := server.NewBgpServer(server.LoggerOption(slog.New(logHandler{log: cfg.Log, lvl: lvl}), lvl))
	go s.Serve()
	global := &api.Global{Asn: cfg.AS, RouterId: cfg.RouterID.String(), ListenPort: -1}
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: global}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("start BGP (AS %d, router ID %s): %w", cfg.AS, cfg.RouterID, err)
	}
	if err := rejectLearned(ctx, s); err != nil {
		s.Stop()
		return nil, err
	}
	return &Speaker{cfg: cfg, s: s, announced: map[netip.Prefix]netip.Addr{}, added: map[netip.Addr]bool{}}, nil
}

// rejectLearned keeps every path a peer sends out of the table (the global
// import policy sees this host's own paths too: those alone pass): what is
// never taken is never announced again to another peer, nor installed.
func rejectLearned(ctx context.Context, s *server.BgpServer) error {
	own := &api.Policy{Name: "tartan-own-only", Statements: []*api.Statement{{
		Name:       "own",
		Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &api.Actions{RouteAction: api.RouteAction_ROUTE_ACTION_ACCEPT},
	}}}
	if err := s.AddPolicy(ctx, &api.AddPolicyRequest{Policy: own}); err != nil {
		return fmt.Errorf("BGP import policy: %w", err)
	}
	a := &api.PolicyAssignment{Name: "global", Direction: api.PolicyDirection_POLICY_DIRECTION_IMPORT,
		Policies: []*api.Policy{{Name: own.Name}}, DefaultAction: api.RouteAction_ROUTE_ACTION_REJECT}
	if err := s.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: a}); err != nil {
		return fmt.Errorf("BGP import policy: %w", err)
	}
	return nil
}

// Stop ends every session without a NOTIFICATION where graceful restart
// was agreed, as a crash would: the peers keep this host's routes for the
// restart time, so that a plugin restart or upgrade costs no route.
func (sp *Speaker) Stop() {
	if err := sp.s.StopBgp(context.Background(), &api.StopBgpRequest{AllowGracefulRestart: true}); err != nil {
		sp.cfg.Log.Warnf("BGP: stop: %v", err)
	}
}

// Announce makes routes the whole set this host announces: new ones are
// announced, gone ones withdrawn. The first call adds the peers (a peer
// that could not be added is tried again by the next).
func (sp *Speaker) Announce(ctx context.Context, routes []Route) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	want := make(map[netip.Prefix]netip.Addr, len(routes))
	for _, r := range routes {
		want[r.Prefix.Masked()] = r.NextHop
	}
	var errs []error
	for p, hop := range sp.announced {
		if w, ok := want[p]; !ok || w != hop {
			if err := sp.s.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{path(p, hop)}}); err != nil {
				errs = append(errs, fmt.Errorf("withdraw %s: %w", p, err))
				continue
			}
			delete(sp.announced, p)
		}
	}
	for _, p := range sortedKeys(want) {
		hop := want[p]
		if _, ok := sp.announced[p]; ok {
			continue
		}
		if _, err := sp.s.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{path(p, hop)}}); err != nil {
			errs = append(errs, fmt.Errorf("announce %s via %s: %w", p, hop, err))
			continue
		}
		sp.announced[p] = hop
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// The peers once the whole set is in; one that could not be added is
	// tried again by the next call.
	for _, p := range sp.cfg.Peers {
		if sp.added[p.Addr] {
			continue
		}
		if err := sp.s.AddPeer(ctx, &api.AddPeerRequest{Peer: sp.peerConf(p)}); err != nil {
			errs = append(errs, fmt.Errorf("BGP peer %s: %w", p, err))
			continue
		}
		sp.added[p.Addr] = true
	}
	return errors.Join(errs...)
}

// Identity is the speaker's AS and router ID.
func (sp *Speaker) Identity() (as uint32, routerID netip.Addr) { return sp.cfg.AS, sp.cfg.RouterID }

// Announced is the set announced, sorted.
func (sp *Speaker) Announced() []Route {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	out := make([]Route, 0, len(sp.announced))
	for _, p := range sortedKeys(sp.announced) {
		out = append(out, Route{Prefix: p, NextHop: sp.announced[p]})
	}
	return out
}

func sortedKeys(m map[netip.Prefix]netip.Addr) []netip.Prefix {
	keys := make([]netip.Prefix, 0, len(m))
	for p := range m {
		keys = append(keys, p)
	}
	slices.SortFunc(keys, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return keys
}

// path is the BGP path of a prefix: IPv4 with a NEXT_HOP, IPv6 with an
// MP_REACH_NLRI.
func path(p netip.Prefix, hop netip.Addr) *apiutil.Path {
	nlri, _ := bgp.NewIPAddrPrefix(p) // p is a valid prefix
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	family := bgp.RF_IPv4_UC
	if p.Addr().Is6() {
		family = bgp.RF_IPv6_UC
		mp, _ := bgp.NewPathAttributeMpReachNLRI(family, []bgp.PathNLRI{{NLRI: nlri}}, hop)
		attrs = append(attrs, mp)
	} else {
		nh, _ := bgp.NewPathAttributeNextHop(hop)
		attrs = append(attrs, nh)
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs}
}

// peerConf is a peer as GoBGP configures it: both unicast families, the
// timers, graceful restart, and nothing imported into GoBGP's table beyond
// what Sessions counts (the speaker installs no learned route).
func (sp *Speaker) peerConf(p Peer) *api.Peer {
	families := []*api.Family{
		{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST},
		{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST},
	}
	gr := sp.cfg.RestartTime > 0
	var afs []*api.AfiSafi
	for _, f := range families {
		af := &api.AfiSafi{Config: &api.AfiSafiConfig{Family: f, Enabled: true}}
		if gr {
			af.MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
		}
		afs = append(afs, af)
	}
	peer := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Addr.String(), PeerAsn: p.AS},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime:          uint64(sp.cfg.HoldTime / time.Second),
			KeepaliveInterval: uint64(sp.cfg.Keepalive / time.Second),
			ConnectRetry:      5,
		}},
		AfiSafis: afs,
	}
	if p.Port != 0 {
		peer.Transport = &api.Transport{RemotePort: uint32(p.Port)}
	}
	if gr {
		// LocalRestarting: this host says its forwarding state was kept
		// (the kernel's routes outlive the plugin) and sends its routes
		// once the peer's End-of-RIB (or the deferral time) has come.
		peer.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(sp.cfg.RestartTime / time.Second),
			DeferralTime: 10, LocalRestarting: true}
	}
	return peer
}

// Session is one peer's session as tartan bgp shows it.
type Session struct {
	Peer     Peer      `json:"peer"`
	State    string    `json:"state"` // idle, connect, active, opensent, openconfirm, established
	Since    time.Time `json:"since,omitzero"`
	Sent     uint64    `json:"prefixesSent"`
	Received uint64    `json:"prefixesReceived"`
	// Reason is why the session last went down ("" when it never did).
	Reason string `json:"reason,omitempty"`
}

// Sessions reads every peer's session.
func (sp *Speaker) Sessions(ctx context.Context) ([]Session, error) {
	var out []Session
	err := sp.s.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		s := Session{State: "idle"}
		if c := p.GetConf(); c != nil {
			s.Peer.Addr, _ = netip.ParseAddr(c.GetNeighborAddress())
			s.Peer.AS = c.GetPeerAsn()
		}
		if t := p.GetTransport(); t != nil && t.GetRemotePort() != 179 {
			s.Peer.Port = uint16(t.GetRemotePort())
		}
		if st := p.GetState(); st != nil {
			s.State = sessionState(st.GetSessionState())
			s.Reason = st.GetDisconnectMessage()
		}
		if ts := p.GetTimers().GetState(); ts != nil && s.State == "established" && ts.GetUptime() != nil {
			s.Since = ts.GetUptime().AsTime()
		}
		for _, af := range p.GetAfiSafis() {
			if st := af.GetState(); st != nil {
				s.Sent += st.GetAdvertised()
				s.Received += st.GetReceived()
			}
		}
		out = append(out, s)
	})
	if err != nil {
		return nil, fmt.Errorf("list BGP peers: %w", err)
	}
	slices.SortFunc(out, func(a, b Session) int { return a.Peer.Addr.Compare(b.Peer.Addr) })
	return out, nil
}

func sessionState(s api.PeerState_SessionState) string {
	switch s {
	case api.PeerState_SESSION_STATE_CONNECT:
		return "connect"
	case api.PeerState_SESSION_STATE_ACTIVE:
		return "active"
	case api.PeerState_SESSION_STATE_OPENSENT:
		return "opensent"
	case api.PeerState_SESSION_STATE_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_SESSION_STATE_ESTABLISHED:
		return "established"
	}
	return "idle"
}
