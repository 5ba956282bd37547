package cli

import (
	"cmp"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tartan-net/tartan/plugin/api"
)

// VersionInfo is what tartan version prints: this binary, the machine it
// runs on, and the plugin that answers on this host, if one does.
type VersionInfo struct {
	Version string `json:"version"`
	Go      string `json:"go"`
	Arch    string `json:"arch"`
	Kernel  string `json:"kernel"`
	// KernelFastPath says whether this kernel can run the eBPF fast path
	// (tcx, Linux 6.6 and later).
	KernelFastPath bool `json:"kernelFastPath"`
	// Plugin is the running plugin's version and fast path, or why none
	// answered (PluginError).
	Plugin      *PluginVersion `json:"plugin,omitempty"`
	PluginError string         `json:"pluginError,omitempty"`
}

// PluginVersion is the running plugin as tartan version shows it.
type PluginVersion struct {
	Version  string              `json:"version"`
	FastPath *api.FastPathStatus `json:"fastpath,omitempty"`
}

// tcxSince is the first kernel with tcx, which the fast path attaches with.
var tcxSince = [2]int{6, 6}

func version(socket string, asJSON bool, stdout, stderr io.Writer) int {
	v := VersionInfo{Version: api.Version, Go: runtime.Version(), Arch: runtime.GOOS + "/" + runtime.GOARCH}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		v.Kernel = unix.ByteSliceToString(u.Release[:])
		v.KernelFastPath = kernelAtLeast(v.Kernel, tcxSince)
	}
	if sock, err := findSocket(socket); err != nil {
		v.PluginError = err.Error()
	} else {
		var st api.HostStatus
		if err := (client{socket: sock}).do("GET", api.StatusPath, &st); err != nil {
			v.PluginError = err.Error()
		} else {
			v.Plugin = &PluginVersion{Version: st.Version, FastPath: st.FastPath}
		}
	}
	if err := show(stdout, asJSON, v, printVersion); err != nil {
		fmt.Fprintf(stderr, "tartan version: %v\n", err)
		return 1
	}
	return 0
}

func printVersion(w io.Writer, v VersionInfo) {
	fmt.Fprintf(w, "tartan\t%s\n", v.Version)
	fmt.Fprintf(w, "go\t%s %s\n", v.Go, v.Arch)
	fp := "the eBPF fast path can run here (tcx)"
	if !v.KernelFastPath {
		fp = fmt.Sprintf("too old for the eBPF fast path (tcx needs Linux %d.%d): the kernel path", tcxSince[0], tcxSince[1])
	}
	fmt.Fprintf(w, "kernel\t%s, %s\n", cmp.Or(v.Kernel, "unknown"), fp)
	if v.Plugin == nil {
		fmt.Fprintf(w, "plugin\tnone answers: %s\n", v.PluginError)
		return
	}
	fmt.Fprintf(w, "plugin\t%s\n", v.Plugin.Version)
	if v.Plugin.FastPath != nil {
		fmt.Fprintf(w, "fast path\t%s\n", fastPathLine(*v.Plugin.FastPath))
	}
}

// kernelAtLeast compares a kernel release ("6.18.44-foo") with a version.
func kernelAtLeast(release string, want [2]int) bool {
	var got [2]int
	parts := strings.FieldsFunc(release, func(r rune) bool { return r == '.' || r == '-' })
	for i := range got {
		if i >= len(parts) {
			return false
		}
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			return false
		}
		got[i] = n
	}
	return got[0] > want[0] || got[0] == want[0] && got[1] >= want[1]
}
