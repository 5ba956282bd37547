// Package kv is tartan's narrow store: versioned keys with compare-and-set
// writes, prefix listing and a blocking watch. Three implementations share one
// contract (and one conformance suite): Consul for clusters, an embedded bbolt
// file for a single host, and memory for tests.
package kv

import (
	"context"
	"errors"
)

var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a compare-and-set lost against a concurrent writer.
	ErrConflict = errors.New("changed concurrently")
	// ErrUnavailable: the store cannot be reached.
	ErrUnavailable = errors.New("store unavailable")
	// ErrDenied: the store refused the operation (its access rules, e.g. a
	// Consul ACL token without write access). Retrying cannot help.
	ErrDenied = errors.New("permission denied")
)

// Pair is one key with its value and version. Versions are positive and
// change on every write of the key.
type Pair struct {
	Key     string
	Value   []byte
	Version uint64
	// Err is set, in listings only, on a key whose value the store cannot
	// read (a damaged embedded file); Value and Version are then empty.
	// Listing it instead of failing keeps one damaged key from hiding all
	// the others; ListJSON reports it like a value that does not decode.
	Err error
}

// Op is one write of a transaction (Store.Txn).
type Op struct {
	Key   string
	Value []byte
	// Version is compared as in Put (0: the key must not exist; Any:
	// whatever it is) and Delete (0: whatever it is).
	Version uint64
	Delete  bool
	// Check only compares: the key's version must be Version (0: the key
	// must not exist). Nothing is written.
	Check bool
}

// Any, as an Op's Version, writes the key whatever its version.
const Any = ^uint64(0)

// MaxTxnOps is the most operations one transaction may hold (Consul's
// limit since 1.14 is 128).
const MaxTxnOps = 64

// Store is what the rest of tartan needs of a key-value store.
type Store interface {
	// Get returns the key or ErrNotFound.
	Get(ctx context.Context, key string) (Pair, error)
	// Put writes the key when its version equals version (0: the key must not
	// exist yet; Any: whatever it is) and returns the new version; otherwise
	// ErrConflict. Only a lost compare-and-set is ErrConflict: callers retry
	// on it.
	Put(ctx context.Context, key string, value []byte, version uint64) (uint64, error)
	// Delete removes the key when its version equals version (0: whatever
	// it is). Deleting a missing key succeeds.
	Delete(ctx context.Context, key string, version uint64) error
	// List returns every key under prefix and an index for Watch. A key
	// whose value cannot be read is listed with Pair.Err set.
	List(ctx context.Context, prefix string) ([]Pair, uint64, error)
	// Watch blocks until something under prefix may have changed after index
	// (or ctx ends) and returns the full listing with the new index.
	Watch(ctx context.Context, prefix string, index uint64) ([]Pair, uint64, error)
	// Txn applies every operation or none: puts and deletes compare and set
	// on their versions as Put and Delete do (deleting a missing key
	// succeeds); ErrConflict when one does not match. It returns the
	// version every key it wrote now has.
	Txn(ctx context.Context, ops []Op) (uint64, error)
	// Close releases the store.
	Close() error
	// String names the store in errors and logs.
	String() string
}
