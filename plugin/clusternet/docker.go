package clusternet

import (
	"context"
	"fmt"
	"maps"
	"strconv"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/tartan-net/tartan/driver"
	"github.com/tartan-net/tartan/kv"
)

// pluginSocket is the socket name in config.json: how the replicator tells
// tartan plugins from other plugins, whatever their names.
const pluginSocket = "tartan.sock"

// API is the Docker API over a unix socket.
type API struct{ c *client.Client }

// NewAPI connects to the Docker API at socket (negotiating the version, so
// that Docker 20.10 and later both answer).
func NewAPI(socket string) (*API, error) {
	c, err := client.NewClientWithOpts(client.WithHost("unix://"+socket), client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker API at %s: %w", socket, err)
	}
	return &API{c: c}, nil
}

// Drivers names the enabled tartan plugins.
func (a *API) Drivers(ctx context.Context) ([]string, error) {
	ps, err := a.c.PluginList(ctx, filters.NewArgs(filters.Arg("enabled", "true")))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ps {
		if p.Config.Interface.Socket == pluginSocket {
			out = append(out, p.Name)
		}
	}
	return out, nil
}

// Networks lists the networks whose driver is one of drivers (tartan plugins).
func (a *API) Networks(ctx context.Context, drivers []string) ([]DockerNetwork, error) {
	list, err := a.networksOf(ctx, drivers)
	if err != nil {
		return nil, err
	}
	var out []DockerNetwork
	for _, n := range list {
		if len(n.IPAM.Config) == 0 || n.Scope == "swarm" {
			continue
		}
		on, _ := strconv.ParseBool(n.Options[driver.OptCluster])
		cfg := n.IPAM.Config[0]
		labels := maps.Clone(n.Labels)
		delete(labels, LabelSource)
		out = append(out, DockerNetwork{ID: n.ID, Cluster: on, Source: n.Labels[LabelSource], Spec: kv.ReplicatedNetwork{
			Name: n.Name, Driver: n.Driver, IPAMDriver: n.IPAM.Driver, Subnet: cfg.Subnet, IPRange: cfg.IPRange,
			Gateway: cfg.Gateway, Aux: cfg.AuxAddress, IPAMOptions: n.IPAM.Options, Options: n.Options, Labels: labels,
			Internal: n.Internal, Attachable: n.Attachable,
		}})
	}
	return out, nil
}

// networksOf lists the networks whose driver is one of drivers, but
// config-only ones (a --config-from template is no network).
func (a *API) networksOf(ctx context.Context, drivers []string) ([]network.Summary, error) {
	ours := map[string]bool{}
	for _, d := range drivers {
		ours[d] = true
	}
	list, err := a.c.NetworkList(ctx, network.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := list[:0]
	for _, n := range list {
		if ours[n.Driver] && !n.ConfigOnly {
			out = append(out, n)
		}
	}
	return out, nil
}

// Create makes the network here, labelled with its origin.
func (a *API) Create(ctx context.Context, s kv.ReplicatedNetwork, driver, ipamDriver string) error {
	labels := maps.Clone(s.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[LabelSource] = s.OriginID
	_, err := a.c.NetworkCreate(ctx, s.Name, network.CreateOptions{
		Driver: driver, Options: s.Options, Labels: labels, Internal: s.Internal, Attachable: s.Attachable,
		IPAM: &network.IPAM{Driver: ipamDriver, Options: s.IPAMOptions, Config: []network.IPAMConfig{{
			Subnet: s.Subnet, IPRange: s.IPRange, Gateway: s.Gateway, AuxAddress: s.Aux}}},
	})
	return err
}

// Remove removes a network by ID.
func (a *API) Remove(ctx context.Context, id string) error { return a.c.NetworkRemove(ctx, id) }

// Changes pokes on every network event.
func (a *API) Changes(ctx context.Context, poke func()) error {
	msgs, errs := a.c.Events(ctx, events.ListOptions{Filters: filters.NewArgs(filters.Arg("type", "network"))})
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errs:
			return err
		case <-msgs:
			poke()
		}
	}
}

// EngineVersion is the Docker engine's version (docker version's Server).
func (a *API) EngineVersion(ctx context.Context) (string, error) {
	v, err := a.c.ServerVersion(ctx)
	if err != nil {
		return "", err
	}
	return v.Version, nil
}

// NetworkView is a tartan network as Docker has it on this host, with the
// endpoints of its containers here (tartan doctor compares them with the
// plugin's records).
type NetworkView struct {
	ID, Name, Scope string
	Endpoints       []EndpointView
}

// EndpointView is one endpoint of a container, as Docker has it.
type EndpointView struct {
	ID, Container string
	IPv4, IPv6    string // as Docker shows them: address/length, or ""
}

// TartanNetworks lists the networks of the enabled tartan plugins, with
// their endpoints on this host. A Docker that lists no enabled tartan
// plugin is not the one this plugin serves: that is an error, not an empty
// view (every record would look stale against it).
func (a *API) TartanNetworks(ctx context.Context) ([]NetworkView, error) {
	drivers, err := a.Drivers(ctx)
	if err != nil {
		return nil, err
	}
	if len(drivers) == 0 {
		return nil, fmt.Errorf("the Docker at the plugin's docker mount lists no enabled tartan plugin: it is not the engine this plugin serves")
	}
	list, err := a.networksOf(ctx, drivers)
	if err != nil {
		return nil, err
	}
	var out []NetworkView
	for _, n := range list {
		ins, err := a.c.NetworkInspect(ctx, n.ID, network.InspectOptions{})
		if err != nil {
			return nil, fmt.Errorf("inspect network %s: %w", n.Name, err)
		}
		v := NetworkView{ID: n.ID, Name: n.Name, Scope: n.Scope}
		for _, c := range ins.Containers {
			v.Endpoints = append(v.Endpoints, EndpointView{ID: c.EndpointID, Container: c.Name, IPv4: c.IPv4Address, IPv6: c.IPv6Address})
		}
		out = append(out, v)
	}
	return out, nil
}
