package driver

import (
	"slices"
	"time"
)

// Local endpoint records outlive their containers when Docker never calls
// DeleteEndpoint (dockerd crashed or was down when the container died, the
// plugin was unreachable during the delete). Reconcile then finds the record
// without its veth, and drops it (staleEndpoints). A record is only this
// host's note of an endpoint: dropping it loses nothing Docker still needs
// (a later DeleteEndpoint for an unknown endpoint succeeds), and the
// endpoint's address belongs to the IPAM, not to it.

// staleInput is what staleEndpoints decides on.
type staleInput struct {
	Endpoints map[string]localEndpoint
	Networks  map[string]localNetwork
	// Busy are the endpoints a call is changing now (d.inflight): their
	// links may be missing for a moment, and the call settles the record.
	Busy map[string]bool
	// VethGone are the endpoints whose host-side interface is missing now
	// (backend.EndpointState.Gone; a macvlan endpoint lives in its
	// container and is never gone).
	VethGone map[string]bool
	// Unjoined are the endpoints whose veth is here but whose other end no
	// container holds (backend.EndpointState.Unjoined): Docker moves it into
	// the container right after CreateEndpoint, so one still here after
	// JoinGrace belongs to a start that failed half-way (the plugin killed
	// before its reply reached Docker, which then gave the container up).
	Unjoined  map[string]bool
	JoinGrace time.Duration
	// Missing is the previous pass's result: when each endpoint was first
	// seen without its veth (or with it unjoined).
	Missing map[string]time.Time
	Now     time.Time
	// Grace is how long a veth must stay missing before the record goes.
	// It covers a lookup that failed for another reason (LinkExists says
	// false on any error) and a DeleteEndpoint that Docker is about to send.
	Grace time.Duration
}

// staleResult says which records to drop and what to remember.
type staleResult struct {
	Drop    []string             // endpoint IDs, sorted
	Missing map[string]time.Time // the next pass's staleInput.Missing
}

// staleEndpoints decides which local endpoint records to drop: at once those
// whose network is no longer in the local state (nothing can use them: the
// network's DeleteNetwork has run), those of routed networks whose veth
// has been missing for at least Grace, and those whose veth no container
// has taken for at least JoinGrace (the link goes later, as one tartan owns
// and has no record of). The caller (Reconcile, with d.mu held; the local
// store is written after) deletes each dropped record from the local store
// and d.st.endpoints, rewrites the firewall when a dropped record had
// published ports, and keeps Missing for its next pass.
func staleEndpoints(in staleInput) staleResult {
	out := staleResult{Missing: map[string]time.Time{}}
	for id, e := range in.Endpoints {
		if in.Busy[id] {
			continue
		}
		if _, ok := in.Networks[e.Network]; !ok {
			out.Drop = append(out.Drop, id)
			continue
		}
		grace := in.Grace
		switch {
		case in.VethGone[id]:
		case in.Unjoined[id]:
			grace = in.JoinGrace
		default:
			continue
		}
		since, seen := in.Missing[id]
		if !seen {
			since = in.Now
		}
		if in.Now.Sub(since) >= grace {
			out.Drop = append(out.Drop, id)
			continue
		}
		out.Missing[id] = since
	}
	slices.Sort(out.Drop)
	return out
}
