package errdefs

import (
	"errors"
	"io"
	"testing"
)

func TestClasses(t *testing.T) {
	inv := Invalid("bad %s: %w", "thing", io.EOF)
	if !errors.Is(inv, ErrInvalid) || errors.Is(inv, ErrInUse) {
		t.Fatalf("Invalid is not (only) ErrInvalid: %v", inv)
	}
	if !errors.Is(inv, io.EOF) {
		t.Fatal("Invalid with %w lost its cause")
	}
	if inv.Error() != "bad thing: EOF" {
		t.Fatalf("message %q", inv.Error())
	}
	use := InUse("taken")
	if !errors.Is(use, ErrInUse) || errors.Is(use, ErrInvalid) || use.Error() != "taken" {
		t.Fatalf("InUse: %v", use)
	}
}
