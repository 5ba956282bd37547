// Package consulbuild only pins Consul's version so that "make consul" can
// build a real Consul server for the tests from the Go module proxy.
package consulbuild

import _ "github.com/hashicorp/consul"
