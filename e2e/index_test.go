//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tartan-net/tartan/e2e/testbed"
	"github.com/tartan-net/tartan/internal/testkit"
)

// A plugin is one architecture, and a user should not have to pick a tag
// by hand: does docker plugin install take a manifest list (or an OCI
// index) that names the amd64 and the arm64 plugin, as docker pull does for
// images? The amd64 and arm64 plugins are pushed, an index of each kind is
// written to the registry by hand, and each engine installs it: the test
// records what the engine does, and fails only if it installs the wrong
// architecture's plugin. The README's "Releases" says what it found.
func TestPluginIndex(t *testing.T) {
	t.Parallel()
	s := newSingle(t, "ix", 9)
	testkit.RequireRoot(t, "docker-registry", "curl")
	reg := testbed.StartRegistry(t, s.NS, "127.0.0.1")
	type plat struct{ arch, ref, digest, diffID string }
	plats := []*plat{{arch: "amd64"}, {arch: "arm64"}}
	for _, p := range plats {
		build := filepath.Join(s.Dir, "build-"+p.arch)
		s.Make(t, "plugin-dir", "ARCH="+p.arch, "BUILD="+build)
		p.ref = reg + "/tartan:index-" + p.arch
		s.MustDocker(t, "plugin", "create", p.ref, filepath.Join(build, "plugin"))
		p.diffID = s.MustDocker(t, "plugin", "inspect", "-f", "{{index .Config.Rootfs.DiffIds 0}}", p.ref)
		s.MustDocker(t, "plugin", "push", p.ref)
		s.MustDocker(t, "plugin", "rm", p.ref)
		head, err := s.Exec("curl", "-sfI", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json",
			"http://"+reg+"/v2/tartan/manifests/index-"+p.arch)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(head, "\n") {
			if v, ok := strings.CutPrefix(strings.ToLower(strings.TrimSpace(l)), "docker-content-digest: "); ok {
				p.digest = v
			}
		}
		if p.digest == "" {
			t.Fatalf("no digest for %s:\n%s", p.ref, head)
		}
	}
	size := func(p *plat) int {
		out, err := s.Exec("curl", "-sf", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json", "http://"+reg+"/v2/tartan/manifests/"+p.digest)
		if err != nil {
			t.Fatal(err)
		}
		return len(out)
	}
	for _, kind := range []struct{ tag, listType, entryType string }{
		{"index-docker", "application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.docker.distribution.manifest.v2+json"},
		{"index-oci", "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.v2+json"},
	} {
		type entry struct {
			MediaType string            `json:"mediaType"`
			Size      int               `json:"size"`
			Digest    string            `json:"digest"`
			Platform  map[string]string `json:"platform"`
		}
		list := struct {
			SchemaVersion int     `json:"schemaVersion"`
			MediaType     string  `json:"mediaType"`
			Manifests     []entry `json:"manifests"`
		}{SchemaVersion: 2, MediaType: kind.listType}
		for _, p := range plats {
			list.Manifests = append(list.Manifests, entry{kind.entryType, size(p), p.digest, map[string]string{"architecture": p.arch, "os": "linux"}})
		}
		body, _ := json.Marshal(list)
		if out, err := s.Exec("curl", "-sf", "-X", "PUT", "-H", "Content-Type: "+kind.listType, "--data-binary", string(body),
			"http://"+reg+"/v2/tartan/manifests/"+kind.tag); err != nil {
			t.Fatalf("put %s: %v %s", kind.tag, err, out)
		}
		ref := reg + "/tartan:" + kind.tag
		out, err := s.Docker("plugin", "install", "--grant-all-permissions", "--disable", ref)
		if err != nil {
			t.Logf("Docker %s: docker plugin install of a %s: refused: %s", s.MustDocker(t, "version", "-f", "{{.Server.Version}}"), kind.listType, lastLine(err.Error()))
			continue
		}
		got := s.MustDocker(t, "plugin", "inspect", "-f", "{{index .Config.Rootfs.DiffIds 0}}", ref)
		s.MustDocker(t, "plugin", "rm", "-f", ref)
		if got != plats[0].diffID {
			t.Fatalf("docker plugin install of a %s on amd64 installed another plugin than the amd64 one (rootfs %s, amd64's %s, arm64's %s): %s",
				kind.listType, got, plats[0].diffID, plats[1].diffID, out)
		}
		t.Logf("Docker %s: docker plugin install of a %s: installed the amd64 plugin", s.MustDocker(t, "version", "-f", "{{.Server.Version}}"), kind.listType)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return fmt.Sprint(lines[len(lines)-1])
}
