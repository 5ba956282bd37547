// Package errdefs holds the classes of request errors: what was asked is
// wrong (Invalid) or belongs to someone else (InUse). The HTTP edge
// (plugin.Status) turns them into status codes once; everything below it
// returns them wrapped or as they are. Messages are written for the person
// who typed the command: they name the thing and the fix.
package errdefs

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalid: the request is wrong (bad option, CIDR, address...).
	ErrInvalid = errors.New("invalid request")
	// ErrInUse: the thing asked for belongs to someone else.
	ErrInUse = errors.New("in use")
)

type classified struct {
	msg   string
	class error
	cause error
}

func (e *classified) Error() string        { return e.msg }
func (e *classified) Is(target error) bool { return target == e.class }
func (e *classified) Unwrap() error        { return e.cause }

// Invalid returns an ErrInvalid whose message is exactly the formatted text;
// a %w in format keeps that error's chain.
func Invalid(format string, args ...any) error { return classify(ErrInvalid, format, args) }

// InUse returns an ErrInUse whose message is exactly the formatted text; a
// %w in format keeps that error's chain.
func InUse(format string, args ...any) error { return classify(ErrInUse, format, args) }

func classify(class error, format string, args []any) error {
	err := fmt.Errorf(format, args...)
	return &classified{msg: err.Error(), class: class, cause: errors.Unwrap(err)}
}
