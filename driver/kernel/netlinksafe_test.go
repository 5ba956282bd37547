package kernel

import (
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestWholeDump: an interrupted dump is read again, a whole one or another
// error is returned at once, and a table that keeps changing is reported.
func TestWholeDump(t *testing.T) {
	n := 0
	got, err := whole(func() ([]int, error) {
		n++
		if n < 3 {
			return []int{n}, fmt.Errorf("dump: %w", netlink.ErrDumpInterrupted)
		}
		return []int{1, 2, 3}, nil
	})
	if err != nil || len(got) != 3 || n != 3 {
		t.Fatalf("%v %v after %d reads", got, err, n)
	}
	n = 0
	if _, err := whole(func() ([]int, error) { n++; return nil, io.EOF }); !errors.Is(err, io.EOF) || n != 1 {
		t.Fatalf("another error: %v after %d reads", err, n)
	}
	n = 0
	if _, err := whole(func() ([]int, error) { n++; return nil, netlink.ErrDumpInterrupted }); !errors.Is(err, netlink.ErrDumpInterrupted) || n != dumpAttempts {
		t.Fatalf("always interrupted: %v after %d reads", err, n)
	}
}
