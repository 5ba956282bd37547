package plugin

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/tartan-net/tartan/plugin/clusternet"
)

// engineWarning says what is known to break with tartan on a Docker engine
// of this version, or "".
func engineWarning(version string) string {
	major, minor, patch, ok := semver(version)
	if ok && major == 29 && minor == 0 && patch < 3 {
		return "Docker " + version + " stops with any network plugin when one of its endpoints stops being a container's gateway (moby#51554): upgrade Docker to 29.0.3 or later"
	}
	return ""
}

// semver reads the numbers of a version such as 29.0.2 or 28.5.2+dfsg4.
func semver(v string) (major, minor, patch int, ok bool) {
	v, _, _ = strings.Cut(v, "+")
	v, _, _ = strings.Cut(v, "-")
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return 0, 0, 0, false
	}
	var n [3]int
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil {
			return 0, 0, 0, false
		}
		n[i] = x
	}
	return n[0], n[1], n[2], true
}

// warnEngine logs engineWarning for the engine behind socket, when the
// plugin can reach it (the docker mount). Docker starts its plugins before
// it answers on its socket, so it asks for a while, in the background.
func warnEngine(ctx context.Context, socket string, log logrus.FieldLogger) {
	if fi, err := os.Stat(socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return
	}
	api, err := clusternet.NewAPI(socket)
	if err != nil {
		return
	}
	for range 30 {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := api.EngineVersion(c)
		cancel()
		if err == nil {
			if w := engineWarning(v); w != "" {
				log.Warn(w)
			}
			log.WithField("engine", v).Debug("docker engine")
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
