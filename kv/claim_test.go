package kv_test

import (
	"context"
	"testing"
	"time"

	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/kv/kvtest"
)

// One live claim per key; the second claimant is told the holder's value;
// a claim given up (its context ended) frees the key, and a broken one is
// lost to its holder and frees the key too. The embedded store has none.
func TestClaims(t *testing.T) {
	for _, st := range kvtest.Stores(consulAddr) {
		t.Run(st.Name, func(t *testing.T) {
			s := st.Make(t)
			c, err := kv.ClaimsOf(s)
			if st.Name == "bolt" {
				if err == nil {
					t.Fatal("the embedded store offers claims")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ttl := 10 * time.Second
			ctx1, cancel1 := context.WithCancel(context.Background())
			defer cancel1()
			held, _, _, err := c.Claim(ctx1, "identity/h", []byte("first"), ttl)
			if err != nil || !held {
				t.Fatalf("first claim: %v %v", held, err)
			}
			ctx2, cancel2 := context.WithCancel(context.Background())
			defer cancel2()
			held, holder, _, err := c.Claim(ctx2, "identity/h", []byte("second"), ttl)
			if err != nil || held || string(holder) != "first" {
				t.Fatalf("second claim while the first lives: held %v, holder %q, %v", held, holder, err)
			}
			cancel1()
			var lost <-chan struct{}
			claimed := false
			for deadline := time.Now().Add(time.Minute); !claimed && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				claimed, _, lost, err = c.Claim(ctx2, "identity/h", []byte("second"), ttl)
				if err != nil {
					t.Fatal(err)
				}
			}
			if !claimed {
				t.Fatal("the key stayed held after its claim was given up")
			}
			if err := c.Break(context.Background(), "identity/h"); err != nil {
				t.Fatal(err)
			}
			select {
			case <-lost:
			case <-time.After(time.Minute):
				t.Fatal("a broken claim was not lost to its holder")
			}
			ctx3, cancel3 := context.WithCancel(context.Background())
			defer cancel3()
			if held, _, _, err := c.Claim(ctx3, "identity/h", []byte("third"), ttl); err != nil || !held {
				t.Fatalf("claim after the break: %v %v", held, err)
			}
		})
	}
}
