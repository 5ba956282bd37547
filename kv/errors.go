package kv

import (
	"errors"
	"fmt"
)

// Request errors that the HTTP edge turns into status codes. Messages are
// written for the person who typed the command: they name the thing and the fix.
var (
	// ErrInvalid: the request is wrong (bad option, CIDR, address...).
	ErrInvalid = errors.New("invalid request")
	// ErrInUse: the thing asked for belongs to someone else.
	ErrInUse = errors.New("in use")
)

type classified struct {
	msg   string
	class error
}

func (e *classified) Error() string        { return e.msg }
func (e *classified) Is(target error) bool { return target == e.class }

// Invalid returns an ErrInvalid whose message is exactly the formatted text.
func Invalid(format string, args ...any) error {
	return &classified{msg: fmt.Sprintf(format, args...), class: ErrInvalid}
}

// InUse returns an ErrInUse whose message is exactly the formatted text.
func InUse(format string, args ...any) error {
	return &classified{msg: fmt.Sprintf(format, args...), class: ErrInUse}
}

// ErrNoIPv6 refuses IPv6 networks, pools and endpoints.
var ErrNoIPv6 = Invalid("IPv6 is not supported yet: create the network without --ipv6")

// checkOps refuses transactions a store cannot run.
func checkOps(ops []Op) error {
	if len(ops) == 0 || len(ops) > MaxTxnOps {
		return fmt.Errorf("a transaction holds 1 to %d operations, not %d", MaxTxnOps, len(ops))
	}
	seen := map[string]bool{}
	for _, op := range ops {
		if seen[op.Key] {
			return fmt.Errorf("a transaction changes key %s twice", op.Key)
		}
		seen[op.Key] = true
		if (op.Check || op.Delete) && op.Version == Any {
			return fmt.Errorf("a check or delete of %s needs a version (or 0), not Any", op.Key)
		}
		if op.Check && op.Delete {
			return fmt.Errorf("an operation on %s both checks and deletes", op.Key)
		}
	}
	return nil
}
