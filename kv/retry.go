package kv

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// ErrRetry is what an attempt returns when it lost a race that another
// attempt may win (a lost compare-and-set, a block that changed hands):
// Retry makes another. Attempts say so explicitly: an ErrConflict that
// reaches Retry is another call's verdict, not this attempt's race.
var ErrRetry = errors.New("lost a race with another writer")

// Retries bounds the attempts of one Retry (flannel's raceRetries): a key
// that a hundred writers in a row took first is contended beyond what
// trying again fixes.
const Retries = 100

// Retry runs attempt until it returns anything but ErrRetry, at most
// Retries times. From the fourth attempt
// on it waits a little first, a random time that grows with the attempts
// (at most 20 ms), so that hosts racing for one key spread out. When every
// attempt lost, the error says so and is ErrConflict.
func Retry(ctx context.Context, attempt func() error) error {
	var err error
	for n := range Retries {
		if n >= 3 {
			wait := time.Duration(rand.Int64N(int64(min(n, 20)) * int64(time.Millisecond)))
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		}
		err = attempt()
		if !errors.Is(err, ErrRetry) {
			return err
		}
	}
	return fmt.Errorf("%d attempts lost their race: %w (%w)", Retries, ErrConflict, err)
}

// RetryOnConflict turns a lost compare-and-set into ErrRetry.
func RetryOnConflict(err error) error {
	if errors.Is(err, ErrConflict) {
		return fmt.Errorf("%w: %w", ErrRetry, err)
	}
	return err
}
