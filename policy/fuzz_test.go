package policy

import (
	"encoding/json"
	"testing"

	"github.com/tartan-net/tartan/kv"
)

// FuzzParse: no input panics the parser; what it accepts survives the
// store's round trip (Marshal, then the decoder the hosts use) unchanged
// in meaning, and evaluates without panicking.
func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte("name: a\nselector: {}\ningress: [{from: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}], ports: [{port: 1-65535}]}]"))
	f.Add([]byte(`[{"name":"b","selector":{"match":[{"key":"k","op":"notin","values":["v"]}]},"types":["egress"],"egress":[{"to":[{"network":"10.0.0.0/16"}]}]}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := Parse(data)
		if err != nil {
			return
		}
		for _, p := range ps {
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatalf("marshal %+v: %v", p, err)
			}
			back, err := decode(kv.Pair{Key: kv.PolicyPath(p.Name), Value: b, Version: 1})
			if err != nil {
				t.Fatalf("a parsed policy does not load back: %v\n%s", err, b)
			}
			b2, _ := json.Marshal(back)
			if string(b) != string(b2) {
				t.Fatalf("the round trip changed the policy:\n%s\n%s", b, b2)
			}
			_ = Evaluate(ps, Flow{Src: ep("10.0.0.1", "10.0.0.0/16", ModeDefaultDeny, "k", "v"), Dst: ep("10.0.0.2", "10.0.0.0/16", ModeIsolated), Protocol: TCP, Port: 80})
		}
	})
}
