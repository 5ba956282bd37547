package kv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tartan-net/tartan/errdefs"
)

// Cluster objects (the README's "What is in the store"). One key per object.

// Pool is an address pool registered once in the cluster.
type Pool struct {
	CIDR      string `json:"cidr"`
	Range     string `json:"range,omitempty"` // --ip-range
	BlockBits int    `json:"blockBits"`       // prefix length of a block
	Gateway   string `json:"gateway,omitempty"`
	Auto      bool   `json:"auto,omitempty"`
	// Holders is how versions before the holder keys (HolderPath) recorded
	// who holds the pool: "<host>/<address space>". Pools registered since
	// hold only HoldersInKeys here (one key every host writes does not
	// scale), which also keeps an older host from ever taking itself for
	// the last holder; hosts of those versions still add themselves here.
	Holders map[string]bool `json:"holders"`
	// Releasing: the last holder is removing the pool's records; nobody
	// allocates in it and a new registration finishes the removal first.
	Releasing bool      `json:"releasing,omitempty"`
	Created   time.Time `json:"created"`
}

// Block is one host's lease on a slice of a pool.
type Block struct {
	CIDR    string    `json:"cidr"`
	Pool    string    `json:"pool"`
	Host    string    `json:"host"`
	Expires time.Time `json:"expires"`
}

// Address kinds.
const (
	KindEndpoint = "endpoint"
	KindGateway  = "gateway"
	KindAux      = "aux"
)

// Address is one allocated address.
type Address struct {
	IP      string    `json:"ip"`
	Pool    string    `json:"pool"`
	Host    string    `json:"host"`
	Kind    string    `json:"kind"`
	MAC     string    `json:"mac,omitempty"`
	Created time.Time `json:"created"`
}

// PoolNetwork is the cluster-wide record of a network; its identity is its
// pool (one subnet is one network, whatever each host calls it).
type PoolNetwork struct {
	Pool string `json:"pool"`
	// Pool6 is the IPv6 pool of a dual-stack network. The IPv6 pool has a
	// record of its own, whose IPv4Pool names the network's IPv4 pool.
	Pool6    string `json:"pool6,omitempty"`
	IPv4Pool string `json:"ipv4Pool,omitempty"`
	Backend  string `json:"backend"`
	VNI      int    `json:"vni,omitempty"`
	MTU      int    `json:"mtu,omitempty"` // as given with -o; 0: from the underlay
	Internal bool   `json:"internal,omitempty"`
	// Swarm: recorded by a swarm manager's AllocateNetwork, which is not
	// told whether the network is internal.
	Swarm bool `json:"swarm,omitempty"`
	// DirectRouting: vxlan peers on the same L2 are routed directly.
	DirectRouting bool `json:"directRouting,omitempty"`
	// Policy is the network's network-policy default (tartan.policy; ""
	// is allow), the same on every host.
	Policy  string            `json:"policy,omitempty"`
	Options map[string]string `json:"options,omitempty"`
	Created time.Time         `json:"created"`
}

// ReplicatedNetwork is a network created once and made on every host by each
// host's replicator through its Docker API (-o tartan.cluster=true). It
// holds what docker network create needs; its identity is its name.
type ReplicatedNetwork struct {
	Name        string            `json:"name"`
	Origin      string            `json:"origin"`   // host that made it
	OriginID    string            `json:"originID"` // its Docker network ID there
	Driver      string            `json:"driver"`
	IPAMDriver  string            `json:"ipamDriver"`
	Subnet      string            `json:"subnet"`
	IPRange     string            `json:"ipRange,omitempty"`
	Gateway     string            `json:"gateway,omitempty"`
	Aux         map[string]string `json:"aux,omitempty"`
	IPAMOptions map[string]string `json:"ipamOptions,omitempty"`
	Options     map[string]string `json:"options,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Internal    bool              `json:"internal,omitempty"`
	Attachable  bool              `json:"attachable,omitempty"`
	Created     time.Time         `json:"created"`
}

// Host is a host running the plugin. Its record changes when its address
// or version does: every host watches hosts/. That the host is still alive
// is renewed under renewals/, which nobody watches (RenewalPath); Renewed
// here is when the record was written (and renewed, for hosts of versions
// before renewals/, which read it only here: see Renewals).
type Host struct {
	ID      string    `json:"id"`
	Address string    `json:"address"`
	Version string    `json:"version"`
	Renewed time.Time `json:"renewed"`
	// Renewals: the host renews under renewals/ and reads renewals there.
	Renewals bool `json:"renewals,omitempty"`
	// LinkLocal6 is the IPv6 link-local address of the host's underlay
	// interface, if it has one: peers on its segment route dual-stack
	// pools' blocks through it (an IPv6 route takes no IPv4 next hop).
	LinkLocal6 string `json:"linkLocal6,omitempty"`
	// WireGuardKey is the host's WireGuard public key (base64, as wg
	// prints it) and WireGuardPort the UDP port it listens on at Address:
	// peers of its wireguard networks encrypt to them. The private key
	// never leaves the host.
	WireGuardKey  string `json:"wireguardKey,omitempty"`
	WireGuardPort int    `json:"wireguardPort,omitempty"`
}

// Renewal is a host's liveness renewal (RenewalPath).
type Renewal struct {
	Renewed time.Time `json:"renewed"`
}

// DefaultLeaseTTL is how long a host stays alive without renewing its
// lease, unless LEASE_TTL says otherwise.
const DefaultLeaseTTL = 24 * time.Hour

// PoolKey turns a CIDR into the key segment that names its pool.
func PoolKey(cidr string) string { return strings.ReplaceAll(cidr, "/", "-") }

// Key layout.
func PoolPath(cidr string) string         { return "pools/" + PoolKey(cidr) }
func BlockPrefix(pool string) string      { return BlocksPrefix + PoolKey(pool) + "/" }
func BlockPath(pool, block string) string { return BlockPrefix(pool) + PoolKey(block) }
func AddressPrefix(pool string) string    { return "addrs/" + PoolKey(pool) + "/" }
func AddressPath(pool, ip string) string  { return AddressPrefix(pool) + ip }
func NetworkPath(pool string) string      { return "networks/" + PoolKey(pool) }
func VNIPath(vni int) string              { return fmt.Sprintf("vnis/%d", vni) }
func HostPath(id string) string           { return "hosts/" + id }
func RenewalPath(id string) string        { return RenewalsPrefix + id }

// HolderPrefix lists the hosts (with the address space) that hold a pool,
// one key each: "<host>/<space>" under it.
func HolderPrefix(pool string) string { return "holders/" + PoolKey(pool) + "/" }

// HolderPath is the key of one holder ("<host>/<address space>").
func HolderPath(pool, holder string) string { return HolderPrefix(pool) + holder }

// BlockFeedPrefix lists a pool's recent block changes: a claim, a take-over
// or a removal writes the block's entry in the same transaction, and entries
// go after FeedRetention. Routing watches the feed, which stays small,
// instead of the block list, which every claim would send in full to every
// host; it reads the block list itself only now and then (issue 10).
func BlockFeedPrefix(pool string) string { return BlockFeedRoot + PoolKey(pool) + "/" }

// BlockFeedPath is the feed entry of one block.
func BlockFeedPath(pool, block string) string { return BlockFeedPrefix(pool) + PoolKey(block) }

// FeedRetention is how long a feed entry stays: far longer than a watch
// takes to come back, so that a watcher that is connected sees every entry.
const FeedRetention = 2 * time.Minute

// BlockChange is a feed entry: the block as written, or its removal.
type BlockChange struct {
	Block   Block     `json:"block"`
	Deleted bool      `json:"deleted,omitempty"`
	At      time.Time `json:"at"`
}

// ExceptionPrefix lists a pool's route exceptions: the endpoint addresses
// that live away from their block's owner (borrowed when every block was
// taken, asked for with --ip inside another host's block, taken over from a
// swarm manager). Routing watches these and never the pool's addresses.
func ExceptionPrefix(pool string) string { return ExceptionRoot + PoolKey(pool) + "/" }

// ExceptionPath is the exception of one address; it holds the address's
// record and is written and deleted in the same transaction as it.
func ExceptionPath(pool, ip string) string { return ExceptionPrefix(pool) + ip }
func ClusterNetPath(name string) string    { return ClusterNetsPrefix + name }

// Key prefixes for listing.
const (
	PoolsPrefix    = "pools/"
	PoolsGuard     = "pools.guard"
	NetworksPrefix = "networks/"
	HostsPrefix    = "hosts/"
	RenewalsPrefix = "renewals/"
	BlocksPrefix   = "blocks/"
	VNIsPrefix     = "vnis/"
	// BlockFeedRoot holds every pool's block feed (BlockFeedPrefix) and
	// ExceptionRoot every pool's route exceptions (ExceptionPrefix): a host
	// watches each once, whatever the number of its networks.
	BlockFeedRoot = "blockfeed/"
	ExceptionRoot = "routes/"
	// ClusterNetsPrefix holds ReplicatedNetwork records by network name.
	ClusterNetsPrefix = "clusternets/"
	// PoliciesPrefix holds the cluster's network policies by name
	// (package policy).
	PoliciesPrefix = "policies/"
	// EndpointLabelsRoot holds every host's EndpointLabels records, by
	// host (EndpointLabelsPrefix): a host watches the root once.
	EndpointLabelsRoot = "endpointlabels/"
)

// EndpointLabels is the identity of a labelled endpoint, for the network
// policy of the other hosts: its addresses and labels, written by its host.
type EndpointLabels struct {
	IP       string            `json:"ip"`
	IP6      string            `json:"ip6,omitempty"`
	Pool     string            `json:"pool"` // its network's IPv4 pool: the network's identity
	Endpoint string            `json:"endpoint"`
	Host     string            `json:"host"`
	Labels   map[string]string `json:"labels"`
}

// EndpointLabelsPrefix holds one host's EndpointLabels records.
func EndpointLabelsPrefix(host string) string { return EndpointLabelsRoot + host + "/" }

// EndpointLabelsPath is the record of one endpoint of host, by its ID.
func EndpointLabelsPath(host, endpoint string) string { return EndpointLabelsPrefix(host) + endpoint }

// PolicyPath is the record of one network policy.
func PolicyPath(name string) string { return PoliciesPrefix + name }

// HoldersInKeys, in Pool.Holders, says that the pool's holders are its
// holder keys (HolderPath).
const HoldersInKeys = "(holder keys)"

// PoolHolders is who holds a pool: its holder keys, and the holders its
// record lists (legacy, from Pool.Holders).
func PoolHolders(ctx context.Context, s Store, pool string, legacy map[string]bool) (map[string]bool, error) {
	ps, _, err := s.List(ctx, HolderPrefix(pool))
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, p := range ps {
		if !IsFolder(p.Key) {
			out[strings.TrimPrefix(p.Key, HolderPrefix(pool))] = true
		}
	}
	for h, ok := range legacy {
		if ok && h != HoldersInKeys {
			out[h] = true
		}
	}
	return out, nil
}

// DecodeError is a stored record that cannot be read as what its key holds:
// garbage written by hand, a damaged file, a field another version changed.
type DecodeError struct {
	Key   string // the key, without the store's prefix
	Store string // the store, as its String names it
	Err   error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("record %s in %s cannot be read (%v): fix or delete the key", e.Key, e.Store, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// GetJSON reads key into v and returns its version.
func GetJSON(ctx context.Context, s Store, key string, v any) (uint64, error) {
	p, err := s.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(p.Value, v); err != nil {
		return 0, &DecodeError{Key: key, Store: s.String(), Err: err}
	}
	return p.Version, nil
}

// PutJSON writes v at key with compare-and-set on version.
func PutJSON(ctx context.Context, s Store, key string, v any, version uint64) (uint64, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("encode %s: %w", key, err)
	}
	return s.Put(ctx, key, b, version)
}

// ListJSON decodes every value under prefix, calling fn for each.
//
// One unreadable record must not hide all the others (a bad hosts/ value
// would otherwise stop every allocation and every peer sync in the
// cluster), so a record that does not decode is left out and handed to
// skipped, whose caller reports it with the key (and may still use the key:
// an address key names a taken address even when its value is garbage).
// Without skipped, the first such record ends the listing with its
// *DecodeError: nothing is ever left out silently.
func ListJSON[T any](ctx context.Context, s Store, prefix string, fn func(key string, version uint64, v T) error, skipped func(*DecodeError)) (uint64, error) {
	ps, index, err := s.List(ctx, prefix)
	if err != nil {
		return 0, err
	}
	if err := DecodeJSON(s, ps, fn, skipped); err != nil {
		return 0, err
	}
	return index, nil
}

// DecodeJSON is ListJSON over a listing already read (a watch's answer).
func DecodeJSON[T any](s Store, ps []Pair, fn func(key string, version uint64, v T) error, skipped func(*DecodeError)) error {
	for _, p := range ps {
		if IsFolder(p.Key) {
			continue
		}
		var v T
		err := p.Err
		if err == nil {
			err = json.Unmarshal(p.Value, &v)
		}
		if err != nil {
			derr := &DecodeError{Key: p.Key, Store: s.String(), Err: err}
			if skipped == nil {
				return derr
			}
			skipped(derr)
			continue
		}
		if err := fn(p.Key, p.Version, v); err != nil {
			return err
		}
	}
	return nil
}

// IsFolder says whether key is a folder marker (KeepFolder), not a record.
func IsFolder(key string) bool { return strings.HasSuffix(key, "/") }

// KeepFolder writes the marker of a watched prefix (a key equal to the
// prefix, ending in /, with no value) unless it is there. A Consul blocking
// query on a prefix with no key answers with the index of the whole KV
// store, so it wakes on every write anywhere in the cluster; with the
// marker it wakes only when something under the prefix changes (issue 10).
// Listings skip markers (ListJSON); DeletePrefixCAS removes them with the
// rest.
func KeepFolder(ctx context.Context, s Store, prefix string) error {
	if !IsFolder(prefix) {
		return fmt.Errorf("folder %q must end in /", prefix)
	}
	if _, err := s.Put(ctx, prefix, nil, 0); err != nil && !errors.Is(err, ErrConflict) {
		return err
	}
	return nil
}

// PrefixFromKey reads a key segment made by PoolKey back into a prefix, so
// that the key of a record that cannot be read still says what it holds.
func PrefixFromKey(segment string) (netip.Prefix, error) {
	i := strings.LastIndexByte(segment, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("key segment %q does not name a prefix", segment)
	}
	return netip.ParsePrefix(segment[:i] + "/" + segment[i+1:])
}

// ErrUnchanged, returned by an Update function, ends the update without a write.
var ErrUnchanged = errors.New("unchanged")

// ErrDelete, returned by an Update function, deletes the key.
var ErrDelete = errors.New("delete")

// Update reads key (zero value and exists=false when missing), lets fn change
// it and writes it back with compare-and-set, retrying on conflicts.
func Update[T any](ctx context.Context, s Store, key string, fn func(v *T, exists bool) error) (T, error) {
	var v T
	err := Retry(ctx, func() error {
		v = *new(T)
		version, err := GetJSON(ctx, s, key, &v)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		switch ferr := fn(&v, exists); {
		case errors.Is(ferr, ErrUnchanged):
			return nil
		case errors.Is(ferr, ErrDelete):
			if !exists {
				return nil
			}
			err = s.Delete(ctx, key, version)
		case ferr != nil:
			return ferr
		default:
			_, err = PutJSON(ctx, s, key, v, version)
		}
		return RetryOnConflict(err)
	})
	return v, err
}

// MaxVNI is the largest VXLAN network identifier.
const MaxVNI = 1<<24 - 1

// FirstAutoVNI is where automatic VNIs start: above flannel's default VNI
// (1, on the same default UDP port 8472), so that tartan's devices and
// flannel's can live on one host, and above the low numbers people pick
// by hand with -o tartan.vni.
const FirstAutoVNI = 256

// ClaimVNI reserves a VNI for the network of pool: want when given (an error
// when another network has it), else the network's existing claim, else the
// lowest free one from FirstAutoVNI. created says whether this call wrote
// the claim (false: the network's claim was there), so that a caller undoing
// its work releases only what it made.
//
// A claim whose write committed but whose answer was lost (a failover to
// the next Consul server retries it there, and it conflicts with itself) is
// recognised as this pool's, not taken for another network's: the lost
// answer used to make the next VNI claimed and the first leak.
func ClaimVNI(ctx context.Context, s Store, want int, pool string) (vni int, created bool, err error) {
	if want != 0 {
		_, err := s.Put(ctx, VNIPath(want), []byte(pool), 0)
		if errors.Is(err, ErrConflict) {
			p, gerr := s.Get(ctx, VNIPath(want))
			if gerr == nil && string(p.Value) == pool {
				return want, false, nil
			}
			return 0, false, errdefs.InUse("VNI %d is used by network %s: pick another -o tartan.vni or leave it out", want, string(p.Value))
		}
		return want, err == nil, err
	}
	ps, _, err := s.List(ctx, VNIsPrefix)
	if err != nil {
		return 0, false, err
	}
	used := map[string]bool{}
	for _, p := range ps {
		if string(p.Value) == pool {
			// The network's claim from an earlier try (or another host's
			// concurrent create of the same network): one VNI per network.
			if n, err := strconv.Atoi(strings.TrimPrefix(p.Key, VNIsPrefix)); err == nil && n > 0 && n <= MaxVNI {
				return n, false, nil
			}
		}
		used[p.Key] = true
	}
	for vni := FirstAutoVNI; vni <= MaxVNI; vni++ {
		if used[VNIPath(vni)] {
			continue
		}
		_, err := s.Put(ctx, VNIPath(vni), []byte(pool), 0)
		if err == nil {
			return vni, true, nil
		}
		if !errors.Is(err, ErrConflict) {
			return 0, false, err
		}
		if p, gerr := s.Get(ctx, VNIPath(vni)); gerr == nil && string(p.Value) == pool {
			return vni, true, nil // this call's own write, its answer lost
		}
	}
	return 0, false, errdefs.InUse("every VNI is in use")
}

// DeleteNetworkCAS removes the network record of pool and the VNI it claimed,
// each only as read (a VNI record naming another pool is not this network's).
func DeleteNetworkCAS(ctx context.Context, s Store, pool string) error {
	var n PoolNetwork
	nv, err := GetJSON(ctx, s, NetworkPath(pool), &n)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if n.VNI != 0 {
		if err := DeleteVNIOf(ctx, s, n.VNI, pool); err != nil {
			return err
		}
	}
	return deleteAsRead(ctx, s, NetworkPath(pool), nv)
}

// DeleteVNIOf releases a VNI claim if it names pool.
func DeleteVNIOf(ctx context.Context, s Store, vni int, pool string) error {
	p, err := s.Get(ctx, VNIPath(vni))
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if string(p.Value) != pool {
		return nil
	}
	return deleteAsRead(ctx, s, VNIPath(vni), p.Version)
}

// DeletePrefixCAS deletes every key under prefix, each at the version it was
// listed with; a key rewritten meanwhile is listed and deleted again.
func DeletePrefixCAS(ctx context.Context, s Store, prefix string) error {
	err := Retry(ctx, func() error {
		ps, _, err := s.List(ctx, prefix)
		if err != nil {
			return err
		}
		conflict := false
		for _, p := range ps {
			err := s.Delete(ctx, p.Key, p.Version)
			if errors.Is(err, ErrConflict) {
				conflict = true
				continue
			}
			if err != nil {
				return err
			}
		}
		if conflict {
			return ErrRetry
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete %s: %w", prefix, err)
	}
	return nil
}

// deleteAsRead deletes key at version; a key changed meanwhile is left to
// whoever changed it.
func deleteAsRead(ctx context.Context, s Store, key string, version uint64) error {
	if err := s.Delete(ctx, key, version); err != nil && !errors.Is(err, ErrConflict) {
		return err
	}
	return nil
}

// ClusterIDKey holds the store's identity: a random ID made once, which
// tells nodes pointed at different stores apart.
const ClusterIDKey = "cluster.id"

// ClusterID returns the store's identity, creating it the first time.
func ClusterID(ctx context.Context, s Store) (string, error) {
	for {
		p, err := s.Get(ctx, ClusterIDKey)
		if err == nil {
			return string(p.Value), nil
		}
		if !errors.Is(err, ErrNotFound) {
			return "", fmt.Errorf("read the store's identity: %w", err)
		}
		b := make([]byte, 8)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		if _, err := s.Put(ctx, ClusterIDKey, []byte(hex.EncodeToString(b)), 0); err != nil && !errors.Is(err, ErrConflict) {
			return "", fmt.Errorf("record the store's identity: %w", err)
		}
	}
}
