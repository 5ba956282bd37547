package cli

import (
	"strings"
	"testing"
)

// TestPolicyArgs: tartan policy's subcommands and their arguments, refused
// with what to write.
func TestPolicyArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // "" accepted
	}{
		{[]string{"policy", "apply", "-f", "p.yaml"}, ""},
		{[]string{"policy", "ls", "--json"}, ""},
		{[]string{"policy", "log"}, ""},
		{[]string{"policy", "log", "x"}, "log takes no arguments"},
		{[]string{"policy", "get", "api"}, ""},
		{[]string{"policy", "rm", "api"}, ""},
		{[]string{"policy", "explain", "10.1.0.2", "10.1.0.3", "80/tcp"}, ""},
		{[]string{"policy", "explain", "10.1.0.2", "10.1.0.3", "icmp"}, ""},
		{[]string{"policy"}, "give a subcommand"},
		{[]string{"policy", "apply"}, "apply takes the file with -f"},
		{[]string{"policy", "get"}, "get takes one policy name"},
		{[]string{"policy", "explain", "10.1.0.2", "10.1.0.3", "80/sctp"}, "give PORT/tcp, PORT/udp or icmp"},
		{[]string{"policy", "ls", "-f", "x"}, "-f is for apply"},
		{[]string{"policy", "frob"}, `unknown subcommand "frob"`},
	} {
		var stdout, stderr strings.Builder
		_, code, stop := parseArgs(c.args, &stdout, &stderr)
		if c.want == "" && stop {
			t.Errorf("%v refused: %s", c.args, stderr.String())
		}
		if c.want != "" && (!stop || code != 2 || !strings.Contains(stderr.String(), c.want)) {
			t.Errorf("%v: code %d, %q; want exit 2 with %q", c.args, code, stderr.String(), c.want)
		}
	}
}
