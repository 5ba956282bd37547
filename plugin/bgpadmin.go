package plugin

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tartan-net/tartan/driver/bgp/speaker"
	"github.com/tartan-net/tartan/plugin/api"
)

// serveBGP adds tartan bgp's endpoint: the speaker's sessions and what it
// announces (sp nil: BGP is off).
func (h *Handler) serveBGP(sp *speaker.Speaker) {
	h.admin("GET "+api.BGPPath, false, func(ctx context.Context, _ *http.Request) (any, error) {
		return bgpStatus(ctx, sp)
	})
}

// bgpStatus is the speaker as tartan bgp shows it.
func bgpStatus(ctx context.Context, sp *speaker.Speaker) (api.BGPStatus, error) {
	st := api.BGPStatus{Sessions: []api.BGPSession{}, Announced: []string{}}
	if sp == nil {
		return st, nil
	}
	as, id := sp.Identity()
	st.On, st.AS, st.RouterID = true, as, id.String()
	sessions, err := sp.Sessions(ctx)
	if err != nil {
		return st, err
	}
	for _, s := range sessions {
		st.Sessions = append(st.Sessions, api.BGPSession{Peer: s.Peer.Addr.String(), AS: s.Peer.AS, State: s.State, Since: s.Since,
			Sent: s.Sent, Received: s.Received, Reason: s.Reason})
	}
	for _, r := range sp.Announced() {
		st.Announced = append(st.Announced, fmt.Sprintf("%s via %s", r.Prefix, r.NextHop))
	}
	return st, nil
}

// bgpFindings are doctor's BGP findings: a session that is not
// Established, and a prefix this host holds but does not announce (or
// announces but no longer holds): drift, from the driver.
func bgpFindings(ctx context.Context, sp *speaker.Speaker, drift []string) []api.Finding {
	if sp == nil {
		return nil
	}
	var out []api.Finding
	as, id := sp.Identity()
	sessions, err := sp.Sessions(ctx)
	if err != nil {
		return []api.Finding{{What: "BGP: " + err.Error(), Fix: "the plugin's log says more; docker plugin disable and enable restarts the speaker"}}
	}
	for _, s := range sessions {
		if s.State == "established" {
			continue
		}
		what := fmt.Sprintf("BGP session with %s is %s, not Established", s.Peer, s.State)
		if s.Reason != "" {
			what += " (last down: " + s.Reason + ")"
		}
		out = append(out, api.Finding{What: what, Fix: fmt.Sprintf(
			"check that the router has this host as a neighbor (address %s or this host's, AS %d) with AS %d for itself, and that TCP port 179 reaches it from this host; tartan bgp shows the sessions", id, as, s.Peer.AS)})
	}
	for _, d := range drift {
		out = append(out, api.Finding{What: d, Fix: "tartan repair announces what the plans say again; the plugin's log says why it did not"})
	}
	return out
}

// bgpCollector reports the speaker's sessions by state and the prefixes
// it announces, read at each scrape.
type bgpCollector struct {
	sp                  *speaker.Speaker
	sessions, announced *prometheus.Desc
}

// BGP adds the speaker's metrics (sp nil: none).
func (m *Metrics) BGP(sp *speaker.Speaker) {
	if m == nil || sp == nil {
		return
	}
	m.reg.MustRegister(&bgpCollector{sp: sp,
		sessions:  prometheus.NewDesc("tartan_bgp_sessions", "BGP sessions of this host, by state (established, active, connect, idle...).", []string{"state"}, nil),
		announced: prometheus.NewDesc("tartan_bgp_prefixes_announced", "Prefixes this host announces to its BGP peers (its blocks, and its containers away from their block).", nil, nil)})
}

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sessions
	ch <- c.announced
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	count := map[string]int{"established": 0, "active": 0, "connect": 0, "idle": 0, "opensent": 0, "openconfirm": 0}
	if sessions, err := c.sp.Sessions(ctx); err == nil {
		for _, s := range sessions {
			count[s.State]++
		}
	}
	for state, n := range count {
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(n), state)
	}
	ch <- prometheus.MustNewConstMetric(c.announced, prometheus.GaugeValue, float64(len(c.sp.Announced())))
}
