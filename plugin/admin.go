package plugin

import (
	"context"
	"net/http"
	"time"

	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/kv"
)

// Paths of the read-only operator endpoints, served on the plugin's socket
// beside libnetwork's (tartan status, tartan hosts).
const (
	StatusPath = "/tartan/v1/status"
	HostsPath  = "/tartan/v1/hosts"
)

// Admin is what the operator endpoints report from.
type Admin struct {
	Host     string
	Store    string
	Scope    string
	Cluster  kv.Store
	LeaseTTL time.Duration
	Now      func() time.Time
}

// HostStatus is this host as its plugin sees it (tartan status).
type HostStatus struct {
	Host     string                 `json:"host"`
	Version  string                 `json:"version"`
	Store    string                 `json:"store"`
	Firewall string                 `json:"firewall"`
	Scope    string                 `json:"scope"`
	Settings string                 `json:"settingsError,omitempty"` // why every request fails, if one does
	Networks []driver.NetworkStatus `json:"networks"`
}

// ServeAdmin adds the operator endpoints. They only read: what they show
// is what the driver and the store hold at the time of the call.
func (h *Handler) ServeAdmin(a Admin) {
	h.mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, _ *http.Request) {
		s := HostStatus{Host: a.Host, Version: Version, Store: a.Store, Scope: a.Scope, Networks: []driver.NetworkStatus{}}
		if h.broken != nil {
			s.Settings = h.broken.Error()
		}
		if h.drv != nil {
			s.Networks, s.Firewall = h.drv.Status(), h.drv.FirewallFlavour()
		}
		reply(w, http.StatusOK, s)
	})
	h.mux.HandleFunc("GET "+HostsPath, func(w http.ResponseWriter, r *http.Request) {
		if a.Cluster == nil {
			reply(w, http.StatusServiceUnavailable, errorBody{Err: "tartan: no store: " + errorText(h.broken)})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), RequestTimeout)
		defer cancel()
		hosts, err := kv.Census(ctx, a.Cluster, a.Now(), a.LeaseTTL, nil)
		if err != nil {
			reply(w, Status(err), errorBody{Err: "tartan: " + err.Error()})
			return
		}
		reply(w, http.StatusOK, hosts)
	})
}

func errorText(err error) string {
	if err == nil {
		return "the plugin has none"
	}
	return err.Error()
}
