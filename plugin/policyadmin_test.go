package plugin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tartan-net/tartan/kv"
	"github.com/tartan-net/tartan/plugin/api"
)

// TestPolicyAdmin: the policy endpoints over the admin API, on a memory
// store: apply (refused whole with the field named, or written), ls, get,
// explain (the deciding rule, for labelled and unlabelled ends), rm.
func TestPolicyAdmin(t *testing.T) {
	store := kv.NewMemory()
	h := newTestHandler(t, nil)
	h.ServeAdmin(Admin{Host: "h1", Cluster: store, Now: time.Now})
	do := func(method, path, body string, v any) int {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(method, path, strings.NewReader(body)))
		if v != nil {
			if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, rec.Body.String())
			}
		}
		return rec.Code
	}
	var e struct{ Err string }
	if code := do(http.MethodPost, api.PoliciesPath, "name: api\nselector: {labels: {app: api}}\ningress: [{from: [{cidr: 10.0.0.0/33}]}]", &e); code != http.StatusBadRequest || !strings.Contains(e.Err, "ingress[0].from[0].cidr") {
		t.Fatalf("a bad policy: %d %q", code, e.Err)
	}
	file := `
name: api
selector: {labels: {app: api}}
ingress:
  - from: [{selector: {labels: {app: web}}}]
    ports: [{port: 80}]
`
	var applied api.PoliciesApplied
	if code := do(http.MethodPost, api.PoliciesPath, file, &applied); code != http.StatusOK || len(applied.Applied) != 1 || applied.Applied[0] != "api" {
		t.Fatalf("apply: %d %+v", code, applied)
	}
	var ls []api.PolicySummary
	if code := do(http.MethodGet, api.PoliciesPath, "", &ls); code != http.StatusOK || len(ls) != 1 || ls[0].Selector != "app=api" || ls[0].Ingress != 1 {
		t.Fatalf("ls: %d %+v", code, ls)
	}
	var got map[string]any
	if code := do(http.MethodGet, api.PoliciesPath+"?name=api", "", &got); code != http.StatusOK || got["name"] != "api" {
		t.Fatalf("get: %d %+v", code, got)
	}
	// Two labelled endpoints and one without labels, on pool 10.70.0.0/24.
	for ip, app := range map[string]string{"10.70.0.2": "api", "10.70.0.3": "web"} {
		if _, err := kv.PutJSON(t.Context(), store, kv.EndpointLabelsPath("h1", "e"+ip), kv.EndpointLabels{IP: ip, Pool: "10.70.0.0/24", Host: "h1", Endpoint: "e" + ip, Labels: map[string]string{"app": app}}, kv.Any); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		q       string
		allowed bool
		why     string
	}{
		{"from=10.70.0.3&to=10.70.0.2&proto=tcp&port=80", true, "allowed by policy api, ingress rule 0"},
		{"from=10.70.0.3&to=10.70.0.2&proto=tcp&port=22", false, "none of their rules allows"},
		{"from=10.70.0.4&to=10.70.0.2&proto=tcp&port=80", false, "none of their rules allows"},
		{"from=10.70.0.2&to=10.70.0.3&proto=icmp", true, "no policy selects"},
	} {
		var x api.Explained
		if code := do(http.MethodGet, api.ExplainPath+"?"+c.q, "", &x); code != http.StatusOK || x.Allowed != c.allowed || !strings.Contains(x.Ingress.Reason+x.Egress.Reason, c.why) {
			t.Errorf("explain %s: %d %+v, want allowed %v with %q", c.q, code, x, c.allowed, c.why)
		}
	}
	if code := do(http.MethodGet, api.ExplainPath+"?from=x&to=10.70.0.2&port=80", "", &e); code != http.StatusBadRequest || !strings.Contains(e.Err, `from "x" is not an address`) {
		t.Errorf("explain with a bad address: %d %q", code, e.Err)
	}
	if code := do(http.MethodGet, api.ExplainPath+"?from=10.70.0.3&to=10.70.0.2", "", &e); code != http.StatusBadRequest || !strings.Contains(e.Err, "give the destination port") {
		t.Errorf("explain without a port: %d %q", code, e.Err)
	}
	// A macvlan network's endpoints cannot be held: a policy that selects
	// one, by its subnet or its labels, is refused.
	if _, err := kv.PutJSON(t.Context(), store, kv.PoolPath("10.71.0.0/24"), kv.Pool{CIDR: "10.71.0.0/24", BlockBits: 26}, kv.Any); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutJSON(t.Context(), store, kv.NetworkPath("10.71.0.0/24"), kv.PoolNetwork{Pool: "10.71.0.0/24", Backend: "macvlan"}, kv.Any); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutJSON(t.Context(), store, kv.EndpointLabelsPath("h1", "mv"), kv.EndpointLabels{IP: "10.71.0.5", Pool: "10.71.0.0/24", Host: "h1", Endpoint: "mv", Labels: map[string]string{"app": "mv"}}, kv.Any); err != nil {
		t.Fatal(err)
	}
	for body, want := range map[string]string{
		"name: m1\nselector: {}\nnetworks: [10.71.0.0/24]":   "networks[0]: 10.71.0.0/24 is a macvlan network",
		"name: m2\nselector: {labels: {app: mv}}":            "selects endpoint 10.71.0.5 of macvlan network 10.71.0.0/24",
		"name: m3\nselector: {}\nnetworks: [10.70.0.0/24]\n": "",
	} {
		code := do(http.MethodPost, api.PoliciesPath, body, &e)
		if want == "" && code != http.StatusOK || want != "" && (code != http.StatusBadRequest || !strings.Contains(e.Err, want)) {
			t.Errorf("apply %q: %d %q, want %q", body, code, e.Err, want)
		}
	}
	var rm api.PolicyRemoved
	if code := do(http.MethodDelete, api.PoliciesPath+"?name=api", "", &rm); code != http.StatusOK || rm.Removed != "api" {
		t.Fatalf("rm: %d %+v", code, rm)
	}
	if code := do(http.MethodDelete, api.PoliciesPath+"?name=api", "", &e); code != http.StatusNotFound || !strings.Contains(e.Err, "tartan policy ls") {
		t.Fatalf("rm again: %d %q", code, e.Err)
	}
}
