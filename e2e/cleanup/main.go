// Command cleanup removes whatever earlier test runs left on this machine
// (make clean-testbed; make test runs it first): the test binaries of a
// killed run, test dockerds with their containers, shims and mounts, Consul
// servers, test namespaces and folders. It finds them by the records every
// run keeps under testkit.RecordRoot, and touches nothing else.
package main

import (
	"fmt"
	"os"

	"github.com/tartan-net/tartan/internal/testkit"
)

func main() {
	n := 0
	testkit.SweepAll(func(format string, args ...any) {
		n++
		fmt.Fprintf(os.Stderr, "clean-testbed: "+format+"\n", args...)
	})
	if n == 0 {
		fmt.Fprintln(os.Stderr, "clean-testbed: nothing left by an earlier test run")
	}
}
