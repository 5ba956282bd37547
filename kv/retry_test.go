package kv

import (
	"context"
	"errors"
	"io"
	"testing"
)

func TestRetry(t *testing.T) {
	ctx := context.Background()
	n := 0
	if err := Retry(ctx, func() error {
		n++
		if n < 5 {
			return ErrRetry
		}
		return nil
	}); err != nil || n != 5 {
		t.Fatalf("%d attempts, %v", n, err)
	}
	n = 0
	if err := Retry(ctx, func() error { n++; return io.EOF }); !errors.Is(err, io.EOF) || n != 1 {
		t.Fatalf("another error is not retried: %d attempts, %v", n, err)
	}
	n = 0
	err := Retry(ctx, func() error { n++; return ErrRetry })
	if n != Retries || !errors.Is(err, ErrConflict) {
		t.Fatalf("%d attempts, %v; want %d and ErrConflict", n, err, Retries)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := Retry(ctx, func() error { return ErrConflict }); !errors.Is(err, ErrConflict) || errors.Is(err, ErrRetry) {
		t.Fatalf("another call's conflict is not retried: %v", err)
	}
	if err := Retry(cctx, func() error { return ErrRetry }); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled retry: %v", err)
	}
}
