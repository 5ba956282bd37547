package policy

import (
	"net/netip"
	"strings"
	"testing"
)

const example = `
# the api takes HTTP from the web tier and from the office, and reaches only
# its database
name: api
selector:
  labels: {app: api}
networks: [10.1.0.0/16]
ingress:
  - from:
      - selector: {labels: {app: web}}
      - cidr: 192.0.2.0/24
        except: [192.0.2.128/25]
    ports:
      - port: 80
      - {protocol: tcp, port: "8000-8080"}
      - protocol: icmp
egress:
  - to:
      - selector:
          match: [{key: app, op: In, values: [db, cache]}]
    ports: [{protocol: tcp, port: 5432}]
---
---
name: web-out
selector: {labels: {app: web}}
types: [egress]
egress:
  - to: [{cidr: "0.0.0.0/0"}, {cidr: "::/0"}]
`

func TestParseExample(t *testing.T) {
	ps, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].Name != "api" || ps[1].Name != "web-out" {
		t.Fatalf("got %+v", ps)
	}
	api := ps[0]
	if got := api.Ingress[0].Ports; got[0].Protocol != TCP || got[0].Port != (PortRange{First: 80, Last: 80}) || got[1].Port != (PortRange{First: 8000, Last: 8080}) || got[2].Protocol != ICMP {
		t.Fatalf("ports: %+v", got)
	}
	if api.Egress[0].To[0].Selector.Match[0].Op != OpIn {
		t.Fatalf("the operator is not normalized: %+v", api.Egress[0].To[0].Selector.Match)
	}
	if d := api.Directions(); len(d) != 2 {
		t.Fatalf("a policy with egress rules isolates both ways: %v", d)
	}
	if d := ps[1].Directions(); len(d) != 1 || d[0] != Egress {
		t.Fatalf("types: [egress] isolates egress only: %v", d)
	}
	// A list, in JSON.
	ps, err = Parse([]byte(`[{"name":"a","selector":{}},{"name":"b","selector":{"labels":{"x":"y"}},"ingress":[{}]}]`))
	if err != nil || len(ps) != 2 {
		t.Fatalf("a JSON list: %v %v", ps, err)
	}
}

// TestParseRefuses: every kind of bad input is refused with the field and
// a fix, and nothing is returned with the error.
func TestParseRefuses(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"name: a\nselctor: {}", `unknown field "selctor"`},
		{"name: a\nselector: {labels: {app: web}}\ningress: [{from: [{cidr: 10.0.0.0/33}]}]", `policy "a": ingress[0].from[0].cidr: "10.0.0.0/33" is not a CIDR`},
		{"name: a\nselector: {}\ningress: [{from: [{cidr: 10.1.2.3/8}]}]", "did you mean 10.0.0.0/8"},
		{"name: a\nselector: {}\ningress: [{from: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]}]", "except[0]: 11.0.0.0/16 is not inside"},
		{"name: a\nselector: {}\ningress: [{ports: [{port: 0}]}]", "port \"0\" is not a number from 1 to 65535"},
		{"name: a\nselector: {}\ningress: [{ports: [{port: 70000}]}]", `ingress[0].ports[0]: port "70000" is not a number from 1 to 65535`},
		{"name: a\nselector: {}\ningress: [{ports: [{port: 90-80}]}]", "ends before it starts"},
		{"name: a\nselector: {}\ningress: [{ports: [{protocol: sctp}]}]", `ingress[0].ports[0]: protocol "sctp": use tcp, udp, icmp or any`},
		{"name: a\nselector: {}\ningress: [{ports: [{protocol: icmp, port: 8}]}]", "protocol icmp has no ports"},
		{"name: a\nselector: {labels: {'bad key!': x}}", "selector: labels: label key"},
		{"name: a\nselector: {match: [{key: app, op: like, values: [x]}]}", `selector: match[0].op: "like"`},
		{"name: a\nselector: {match: [{key: app, op: in}]}", "in needs values"},
		{"name: a\nselector: {match: [{key: app, op: exists, values: [x]}]}", "exists takes no values"},
		{"name: a\nselector: {}\ningress: [{to: [{cidr: 10.0.0.0/8}]}]", "an ingress rule names its peers in from"},
		{"name: a\nselector: {}\ningress: [{from: [{}]}]", "a peer needs a selector, a network or a cidr"},
		{"name: a\nselector: {}\ningress: [{from: [{network: web, cidr: 10.0.0.0/8}]}]", "either endpoints (selector, network) or addresses (cidr)"},
		{"name: a\nselector: {}\ntypes: [ingress]\negress: [{}]", "add egress to types"},
		{"name: a\nselector: {}\ntypes: [sideways]", `types[0]: "sideways"`},
		{"name: Bad_Name\nselector: {}", `policy "Bad_Name": name`},
		{"name: a\nselector: {}\nnetworks: ['no spaces']", "networks[0]"},
		{"name: a\nselector: {}\nnetworks: [web]", `networks[0]: "web": name a network by its IPv4 subnet`},
		{"name: a\nselector: {}\ningress: [{from: [{network: 'fd00::/64'}]}]", "ingress[0].from[0].network"},
		{"name: a\nselector: {}\n---\nname: a\nselector: {}", `policy "a" is in the file twice`},
		{"# nothing\n", "no policy in the file"},
		{"name: [1, 2]", "document 1"},
	} {
		ps, err := Parse([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) || ps != nil {
			t.Errorf("%q: got %v, %v; want an error with %q", c.in, ps, err, c.want)
		}
	}
	many := strings.Repeat("---\nname: p\nselector: {}\n", MaxPerApply+1)
	if _, err := Parse([]byte(many)); err == nil || !strings.Contains(err.Error(), "apply at most 64") {
		t.Errorf("65 policies in one file: %v", err)
	}
}

func ep(addr, network string, mode Mode, labels ...string) Endpoint {
	e := Endpoint{Addr: netip.MustParseAddr(addr), Network: network, Mode: mode, Labels: map[string]string{}}
	for i := 0; i+1 < len(labels); i += 2 {
		e.Labels[labels[i]] = labels[i+1]
	}
	return e
}

// TestEvaluate: the semantics of the README's table, case by case, with
// the rule that decides.
func TestEvaluate(t *testing.T) {
	ps, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	web := ep("10.1.0.2", "10.1.0.0/16", ModeAllow, "app", "web")
	api := ep("10.1.0.3", "10.1.0.0/16", ModeAllow, "app", "api")
	db := ep("10.1.0.4", "10.1.0.0/16", ModeAllow, "app", "db")
	other := ep("10.1.0.5", "10.1.0.0/16", ModeAllow, "app", "other")
	office := ep("192.0.2.10", "", "")
	guest := ep("192.0.2.200", "", "")
	outside := ep("203.0.113.1", "", "")
	apiElsewhere := ep("10.2.0.3", "10.2.0.0/16", ModeAllow, "app", "api")
	for _, c := range []struct {
		name    string
		f       Flow
		allowed bool
		why     string
	}{
		{"web to api on 80", Flow{web, api, TCP, 80}, true, "allowed by policy api, ingress rule 0"},
		{"web to api on 8080 (a range)", Flow{web, api, TCP, 8080}, true, "policy api"},
		{"web to api on 22", Flow{web, api, TCP, 22}, false, "selected for ingress by [api]"},
		{"web to api over UDP 80", Flow{web, api, UDP, 80}, false, "ingress"},
		{"web pings api", Flow{web, api, ICMP, 0}, true, "policy api"},
		{"the office to api", Flow{office, api, TCP, 80}, true, "policy api"},
		{"a guest (except) to api", Flow{guest, api, TCP, 80}, false, "none of their rules"},
		{"other to api", Flow{other, api, TCP, 80}, false, "none of their rules"},
		{"api to db on 5432", Flow{api, db, TCP, 5432}, true, "allowed by policy api, egress rule 0"},
		{"api to db on 22", Flow{api, db, TCP, 22}, false, "selected for egress by [api]"},
		{"api to the outside", Flow{api, outside, TCP, 443}, false, "egress"},
		{"web to the outside (web-out allows all)", Flow{web, outside, TCP, 443}, true, "web-out"},
		{"other to db: nothing selects either", Flow{other, db, TCP, 22}, true, "no policy selects"},
		{"an api endpoint of another network: the policy is for web's", Flow{web, apiElsewhere, TCP, 22}, true, "no policy selects"},
		{"the outside to db", Flow{outside, db, TCP, 22}, true, "no policy selects"},
	} {
		v := Evaluate(ps, c.f)
		why := v.Ingress.Reason + " / " + v.Egress.Reason
		if v.Allowed != c.allowed || !strings.Contains(why, c.why) {
			t.Errorf("%s: allowed %v (%s), want %v with %q", c.name, v.Allowed, why, c.allowed, c.why)
		}
	}

	// The network's defaults.
	a := ep("10.3.0.2", "10.3.0.0/16", ModeIsolated, "app", "a")
	b := ep("10.3.0.3", "10.3.0.0/16", ModeIsolated, "app", "b")
	if v := Evaluate(nil, Flow{a, b, TCP, 80}); v.Allowed || !strings.Contains(v.Ingress.Reason, "isolated") {
		t.Errorf("isolated: a reaches b: %+v", v)
	}
	if v := Evaluate(nil, Flow{outside, b, TCP, 80}); !v.Allowed {
		t.Errorf("isolated: what comes from outside the network is denied: %+v", v)
	}
	if v := Evaluate(nil, Flow{a, outside, TCP, 80}); !v.Allowed {
		t.Errorf("isolated: egress is denied: %+v", v)
	}
	allowAB, err := Parse([]byte("name: ab\nselector: {labels: {app: b}}\ningress: [{from: [{selector: {labels: {app: a}}}], ports: [{port: 80}]}]"))
	if err != nil {
		t.Fatal(err)
	}
	if v := Evaluate(allowAB, Flow{a, b, TCP, 80}); !v.Allowed {
		t.Errorf("isolated with a policy that allows a to b: %+v", v)
	}
	dd := ep("10.4.0.2", "10.4.0.0/16", ModeDefaultDeny, "app", "b")
	dd2 := ep("10.4.0.3", "10.4.0.0/16", ModeDefaultDeny, "app", "a")
	if v := Evaluate(nil, Flow{outside, dd, TCP, 80}); v.Allowed || !strings.Contains(v.Ingress.Reason, "default-deny") {
		t.Errorf("default-deny lets the outside in: %+v", v)
	}
	if v := Evaluate(nil, Flow{dd, outside, TCP, 80}); v.Allowed || !strings.Contains(v.Egress.Reason, "default-deny") {
		t.Errorf("default-deny lets an endpoint out: %+v", v)
	}
	// In a default-deny network a flow needs both ends' rules.
	if v := Evaluate(allowAB, Flow{dd2, dd, TCP, 80}); v.Allowed || !v.Ingress.Allowed || v.Egress.Allowed {
		t.Errorf("default-deny: ingress allowed but egress not: %+v", v)
	}
	egressA, _ := Parse([]byte("name: a-out\nselector: {labels: {app: a}}\ntypes: [egress]\negress: [{to: [{network: 10.4.0.0/16}]}]"))
	if v := Evaluate(append(allowAB, egressA...), Flow{dd2, dd, TCP, 80}); !v.Allowed {
		t.Errorf("default-deny with both ends' rules: %+v", v)
	}
	// IPv6 CIDRs.
	six, _ := Parse([]byte("name: six\nselector: {}\ningress: [{from: [{cidr: 'fd00:1::/64'}]}]"))
	if v := Evaluate(six, Flow{ep("fd00:1::5", "", ""), ep("fd00:9::2", "n6", ModeAllow), TCP, 80}); !v.Allowed {
		t.Errorf("IPv6 cidr: %+v", v)
	}
	if v := Evaluate(six, Flow{ep("fd00:2::5", "", ""), ep("fd00:9::2", "n6", ModeAllow), TCP, 80}); v.Allowed {
		t.Errorf("IPv6 cidr lets another prefix in: %+v", v)
	}
}

func TestSelector(t *testing.T) {
	l := map[string]string{"app": "api", "tier": "back"}
	for _, c := range []struct {
		s    Selector
		want bool
	}{
		{Selector{}, true},
		{Selector{Labels: map[string]string{"app": "api"}}, true},
		{Selector{Labels: map[string]string{"app": "web"}}, false},
		{Selector{Match: []Requirement{{"tier", OpIn, []string{"front", "back"}}}}, true},
		{Selector{Match: []Requirement{{"tier", OpNotIn, []string{"back"}}}}, false},
		{Selector{Match: []Requirement{{"env", OpNotIn, []string{"prod"}}}}, true},
		{Selector{Match: []Requirement{{"env", OpExists, nil}}}, false},
		{Selector{Match: []Requirement{{"env", OpNotExists, nil}}}, true},
		{Selector{Match: []Requirement{{"app", "like", nil}}}, false},
	} {
		if got := c.s.Matches(l); got != c.want {
			t.Errorf("%+v matches %v: %v, want %v", c.s, l, got, c.want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAllow, "allow": ModeAllow, "isolated": ModeIsolated, "default-deny": ModeDefaultDeny} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := ParseMode("deny"); err == nil || !strings.Contains(err.Error(), "tartan.policy=deny: use allow, isolated or default-deny") {
		t.Errorf("deny: %v", err)
	}
}
