package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/tartan-net/tartan/kv"
)

// Skipped reports a policy record of the store that is not used: it does
// not decode or is not valid (written by hand, or by a newer version). One
// bad record never stops the others: the rest of the policies apply.
type Skipped func(key string, err error)

// Load reads every policy of the cluster, sorted by name, and the index a
// watch of kv.PoliciesPrefix continues from. A record that does not decode
// or validate is left out and handed to skipped.
func Load(ctx context.Context, s kv.Store, skipped Skipped) ([]Policy, uint64, error) {
	ps, index, err := s.List(ctx, kv.PoliciesPrefix)
	if err != nil {
		return nil, 0, fmt.Errorf("list policies in %s: %w", s, err)
	}
	return Decode(ps, skipped), index, nil
}

// Decode reads a listing of kv.PoliciesPrefix (a watch's answer) as Load
// does.
func Decode(ps []kv.Pair, skipped Skipped) []Policy {
	out := make([]Policy, 0, len(ps))
	for _, pair := range ps {
		p, err := decode(pair)
		if err != nil {
			if skipped != nil {
				skipped(pair.Key, err)
			}
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Policy) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func decode(pair kv.Pair) (Policy, error) {
	if pair.Err != nil {
		return Policy{}, pair.Err
	}
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(pair.Value)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return Policy{}, fmt.Errorf("does not decode: %w", err)
	}
	p.normalize()
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	if pair.Key != kv.PolicyPath(p.Name) {
		return Policy{}, fmt.Errorf("the record holds policy %q under another name's key", p.Name)
	}
	return p, nil
}

// Apply writes policies (validated whole by Parse) in one transaction:
// all of them or none. A policy of the same name is replaced.
func Apply(ctx context.Context, s kv.Store, policies []Policy) error {
	if len(policies) > MaxPerApply {
		return fmt.Errorf("%d policies: apply at most %d at a time", len(policies), MaxPerApply)
	}
	ops := make([]kv.Op, 0, len(policies))
	for _, p := range policies {
		if err := p.Validate(); err != nil {
			return err
		}
		b, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("encode policy %q: %w", p.Name, err)
		}
		ops = append(ops, kv.Op{Key: kv.PolicyPath(p.Name), Value: b, Version: kv.Any})
	}
	if _, err := s.Txn(ctx, ops); err != nil {
		return fmt.Errorf("write %d policies to %s: %w", len(ops), s, err)
	}
	return nil
}

// ErrNoPolicy is the answer for a policy name the cluster does not have.
var ErrNoPolicy = errors.New("no such policy")

// Get reads one policy.
func Get(ctx context.Context, s kv.Store, name string) (Policy, error) {
	pair, err := s.Get(ctx, kv.PolicyPath(name))
	if errors.Is(err, kv.ErrNotFound) {
		return Policy{}, fmt.Errorf("policy %q: %w (tartan policy ls lists them)", name, ErrNoPolicy)
	} else if err != nil {
		return Policy{}, fmt.Errorf("read policy %q from %s: %w", name, s, err)
	}
	p, err := decode(pair)
	if err != nil {
		return Policy{}, fmt.Errorf("policy record %s in %s: %w", pair.Key, s, err)
	}
	return p, nil
}

// Remove deletes one policy; a name the cluster does not have is
// ErrNoPolicy (a typo must not pass for a removal).
func Remove(ctx context.Context, s kv.Store, name string) error {
	if _, err := s.Get(ctx, kv.PolicyPath(name)); errors.Is(err, kv.ErrNotFound) {
		return fmt.Errorf("policy %q: %w (tartan policy ls lists them)", name, ErrNoPolicy)
	} else if err != nil {
		return fmt.Errorf("read policy %q from %s: %w", name, s, err)
	}
	if err := s.Delete(ctx, kv.PolicyPath(name), 0); err != nil {
		return fmt.Errorf("remove policy %q from %s: %w", name, s, err)
	}
	return nil
}
