package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"
	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/errdefs"
	"github.com/tartan-net/tartan/ipam"
	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/policy"
)

const contentType = "application/vnd.docker.plugins.v1+json"

// RequestTimeout bounds every request so that an unreachable store fails it
// within seconds, with an error that names the store.
const RequestTimeout = 8 * time.Second

// ipamCapabilities adds RequiresRequestReplay, which go-plugins-helpers lacks.
type ipamCapabilities struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

// driverCapabilities adds GwAllocChecker (Docker 28+), which
// go-plugins-helpers lacks: Docker then asks GwAllocCheck before it
// reserves a gateway address for a network.
type driverCapabilities struct {
	Scope             string
	ConnectivityScope string
	GwAllocChecker    bool
}

// gwAllocCheckRequest carries the options CreateNetwork will get.
type gwAllocCheckRequest struct {
	Options map[string]any
}

// gwAllocCheckResponse says which families need no gateway address.
type gwAllocCheckResponse struct {
	SkipIPv4 bool
	SkipIPv6 bool
}

// Handler serves both libnetwork APIs on one socket.
type Handler struct {
	mux  *http.ServeMux
	drv  *driver.Driver
	ipam *ipam.IPAM
	// outbox, when set, keeps releases the store could not take.
	outbox *Outbox
	log    logrus.FieldLogger
	// broken, when set, is returned for every request: the settings were
	// wrong, and this is how the person running docker sees why.
	broken error
	// metrics, when set, counts and times the requests (METRICS).
	metrics *Metrics
	// refused, when set and it says why, fails every request as broken
	// does: this machine must not serve as its host ID (Identity).
	refused func() error
}

// SetMetrics makes the handler count and time its requests.
func (h *Handler) SetMetrics(m *Metrics) { h.metrics = m }

// SetRefusal makes the handler fail every request (but discovery) while
// refused says why.
func (h *Handler) SetRefusal(refused func() error) { h.refused = refused }

// refusal is why every request fails now, or nil.
func (h *Handler) refusal() error {
	if h.broken != nil {
		return h.broken
	}
	if h.refused != nil {
		return h.refused()
	}
	return nil
}

// NewHandler builds the mux. With broken set, every call but Activate
// returns that error.
func NewHandler(drv *driver.Driver, im *ipam.IPAM, outbox *Outbox, log logrus.FieldLogger, broken error) *Handler {
	h := &Handler{mux: http.NewServeMux(), drv: drv, ipam: im, outbox: outbox, log: log, broken: broken}
	h.mux.HandleFunc("/Plugin.Activate", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}})
	})
	h.serveNetworkDriver()
	h.serveIPAMDriver()
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusNotFound, errorBody{Err: fmt.Sprintf("tartan does not implement %s", r.URL.Path)})
	})
	return h
}

// serveNetworkDriver adds libnetwork's network driver calls.
func (h *Handler) serveNetworkDriver() {
	handle(h, "/NetworkDriver.GetCapabilities", func(context.Context, *struct{}) (any, error) {
		return driverCapabilities{Scope: h.drv.Scope(), ConnectivityScope: network.GlobalScope, GwAllocChecker: true}, nil
	})
	handle(h, "/NetworkDriver.GwAllocCheck", func(_ context.Context, r *gwAllocCheckRequest) (any, error) {
		skip, err := h.drv.SkipsGateway(r.Options)
		if err != nil {
			return nil, err
		}
		return gwAllocCheckResponse{SkipIPv4: skip, SkipIPv6: skip}, nil
	})
	handle(h, "/NetworkDriver.CreateNetwork", func(ctx context.Context, r *network.CreateNetworkRequest) (any, error) {
		req, err := networkRequest(r)
		if err != nil {
			return nil, err
		}
		return nil, h.drv.CreateNetwork(ctx, req)
	})
	handle(h, "/NetworkDriver.DeleteNetwork", func(ctx context.Context, r *network.DeleteNetworkRequest) (any, error) {
		return nil, h.drv.DeleteNetwork(ctx, r.NetworkID)
	})
	handle(h, "/NetworkDriver.AllocateNetwork", func(ctx context.Context, r *network.AllocateNetworkRequest) (any, error) {
		req, err := allocateRequest(r)
		if err != nil {
			return nil, err
		}
		opts, err := h.drv.AllocateNetwork(ctx, req)
		if err != nil {
			return nil, err
		}
		return &network.AllocateNetworkResponse{Options: opts}, nil
	})
	handle(h, "/NetworkDriver.FreeNetwork", func(ctx context.Context, r *network.FreeNetworkRequest) (any, error) {
		return nil, h.drv.FreeNetwork(ctx, r.NetworkID)
	})
	h.serveEndpoints()
}

// serveEndpoints adds the network driver's endpoint calls: create, join,
// ports, leave, delete.
func (h *Handler) serveEndpoints() {
	handle(h, "/NetworkDriver.CreateEndpoint", func(ctx context.Context, r *network.CreateEndpointRequest) (any, error) {
		req, err := endpointRequest(r)
		if err != nil {
			return nil, err
		}
		picked, err := h.drv.CreateEndpoint(ctx, req)
		if err != nil {
			return nil, err
		}
		return endpointResponse(picked), nil
	})
	handle(h, "/NetworkDriver.DeleteEndpoint", func(ctx context.Context, r *network.DeleteEndpointRequest) (any, error) {
		return nil, h.drv.DeleteEndpoint(ctx, r.EndpointID)
	})
	handle(h, "/NetworkDriver.EndpointOperInfo", func(ctx context.Context, r *network.InfoRequest) (any, error) {
		v, err := h.drv.EndpointInfo(ctx, r.EndpointID)
		if err != nil {
			return nil, err
		}
		return &network.InfoResponse{Value: v}, nil
	})
	handle(h, "/NetworkDriver.Join", func(ctx context.Context, r *network.JoinRequest) (any, error) {
		j, err := h.drv.Join(ctx, r.EndpointID)
		if err != nil {
			return nil, err
		}
		return joinResponse(j), nil
	})
	handle(h, "/NetworkDriver.Leave", func(ctx context.Context, r *network.LeaveRequest) (any, error) {
		return nil, h.drv.Leave(ctx, r.EndpointID)
	})
	handle(h, "/NetworkDriver.DiscoverNew", func(context.Context, *network.DiscoveryNotification) (any, error) {
		return nil, nil
	})
	handle(h, "/NetworkDriver.DiscoverDelete", func(context.Context, *network.DiscoveryNotification) (any, error) {
		return nil, nil
	})
	handle(h, "/NetworkDriver.ProgramExternalConnectivity", func(ctx context.Context, r *network.ProgramExternalConnectivityRequest) (any, error) {
		ports, err := parsePorts(r.Options)
		if err != nil {
			return nil, err
		}
		return nil, h.drv.PublishPorts(ctx, r.EndpointID, ports)
	})
	handle(h, "/NetworkDriver.RevokeExternalConnectivity", func(ctx context.Context, r *network.RevokeExternalConnectivityRequest) (any, error) {
		return nil, h.drv.WithdrawPorts(ctx, r.EndpointID)
	})
}

// serveIPAMDriver adds libnetwork's IPAM driver calls.
func (h *Handler) serveIPAMDriver() {
	handle(h, "/IpamDriver.GetCapabilities", func(context.Context, *struct{}) (any, error) {
		return ipamCapabilities{RequiresMACAddress: true, RequiresRequestReplay: true}, nil
	})
	handle(h, "/IpamDriver.GetDefaultAddressSpaces", func(context.Context, *struct{}) (any, error) {
		return ipamapi.AddressSpacesResponse{LocalDefaultAddressSpace: ipam.LocalSpace, GlobalDefaultAddressSpace: ipam.GlobalSpace}, nil
	})
	handle(h, "/IpamDriver.RequestPool", func(ctx context.Context, r *ipamapi.RequestPoolRequest) (any, error) {
		id, err := h.ipam.RequestPool(ctx, ipam.PoolRequest{Space: r.AddressSpace, Pool: r.Pool, SubPool: r.SubPool, Options: r.Options, V6: r.V6})
		if err != nil {
			return nil, err
		}
		return ipamapi.RequestPoolResponse{PoolID: id.String(), Pool: id.CIDR.String(), Data: map[string]string{}}, nil
	})
	handle(h, "/IpamDriver.ReleasePool", func(ctx context.Context, r *ipamapi.ReleasePoolRequest) (any, error) {
		id, err := ipam.ParsePoolID(r.PoolID)
		if err != nil {
			return nil, err
		}
		if h.drv.DeferRelease(id) {
			h.log.WithField("pool", id.CIDR).Info("pool release deferred: a network of this host uses the pool; it goes when that network is deleted")
			return nil, nil
		}
		return nil, h.ipam.ReleasePool(ctx, id)
	})
	handle(h, "/IpamDriver.RequestAddress", func(ctx context.Context, r *ipamapi.RequestAddressRequest) (any, error) {
		id, err := ipam.ParsePoolID(r.PoolID)
		if err != nil {
			return nil, err
		}
		addr, err := h.ipam.RequestAddress(ctx, ipam.AddressRequest{Pool: id, Address: r.Address, Options: r.Options})
		if err != nil {
			return nil, err
		}
		return ipamapi.RequestAddressResponse{Address: addr.String(), Data: map[string]string{}}, nil
	})
	handle(h, "/IpamDriver.ReleaseAddress", func(ctx context.Context, r *ipamapi.ReleaseAddressRequest) (any, error) {
		id, err := ipam.ParsePoolID(r.PoolID)
		if err != nil {
			return nil, err
		}
		ip, err := netip.ParseAddr(r.Address)
		if err != nil {
			return nil, errdefs.Invalid("address %q is not an IP address", r.Address)
		}
		if h.drv.EndpointHas(id.CIDR, ip) {
			h.log.WithFields(logrus.Fields{"pool": id.CIDR, "ip": ip}).Info("not releasing an address a live endpoint of this host has (a late second release)")
			return nil, nil
		}
		err = h.ipam.ReleaseAddress(ctx, id, r.Address)
		if errors.Is(err, kv.ErrUnavailable) && h.outbox != nil {
			// Docker does not retry a failed release: keep it and retry it
			// until the store takes it.
			if qerr := h.outbox.Add(context.WithoutCancel(ctx), id, ip); qerr == nil {
				h.log.WithFields(logrus.Fields{"pool": id.CIDR, "ip": ip}).Warnf("release queued until the store is back: %v", err)
				return nil, nil
			}
		}
		return nil, err
	})
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

type errorBody struct{ Err string }

// discovery are the calls Docker makes to register the drivers: answered
// even when the plugin is broken, so that Docker registers it and shows the
// reason on the first real request (otherwise it says only "invalid ipam
// driver").
func discovery(path string) bool {
	switch path {
	case "/NetworkDriver.GetCapabilities", "/IpamDriver.GetCapabilities", "/IpamDriver.GetDefaultAddressSpaces":
		return true
	}
	return false
}

// handle registers a JSON endpoint: decode, call, classify the error once.
func handle[Req any](h *Handler, path string, fn func(context.Context, *Req) (any, error)) {
	h.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		req := new(Req)
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			reply(w, http.StatusBadRequest, errorBody{Err: fmt.Sprintf("read request to %s: %v", path, err)})
			return
		}
		if len(body) > 0 {
			if err := json.Unmarshal(body, req); err != nil {
				h.log.WithField("call", path).Warnf("malformed request: %v", err)
				reply(w, http.StatusBadRequest, errorBody{Err: fmt.Sprintf("malformed JSON in request to %s: %v", path, err)})
				return
			}
		}
		if err := h.refusal(); err != nil && !discovery(path) {
			reply(w, http.StatusServiceUnavailable, errorBody{Err: "tartan: " + err.Error()})
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), RequestTimeout)
		defer cancel()
		start := time.Now()
		resp, err := fn(ctx, req)
		took := time.Since(start)
		log := h.log.WithFields(logrus.Fields{"call": path, "took": took.Round(time.Microsecond)})
		if err != nil {
			status := Status(err)
			h.metrics.Request(path, status, took)
			log.WithField("status", status).Warn(err)
			reply(w, status, errorBody{Err: "tartan: " + err.Error()})
			return
		}
		h.metrics.Request(path, http.StatusOK, took)
		log.Debug("ok")
		if resp == nil {
			resp = struct{}{}
		}
		reply(w, http.StatusOK, resp)
	})
}

// Status classifies an error for the HTTP edge.
func Status(err error) int {
	switch {
	case errors.Is(err, errdefs.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, errdefs.ErrInUse), errors.Is(err, kv.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, kv.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	case errors.Is(err, kv.ErrDenied):
		return http.StatusForbidden
	case errors.Is(err, policy.ErrNoPolicy):
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
