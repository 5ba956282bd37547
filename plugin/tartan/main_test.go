package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// The binary run as its own test: TARTAN_TEST_MAIN=1 makes the test binary
// main itself, so that the exit status and both outputs are the real ones.
func TestMain(m *testing.M) {
	if os.Getenv("TARTAN_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func runMain(t *testing.T, args ...string) (rc int, stdout, stderr string) {
	t.Helper()
	self := []string{os.Args[0]}
	if emu := os.Getenv("TARTAN_TEST_EMULATOR"); emu != "" { // make check-arm64: qemu-aarch64-static
		self = append([]string{emu}, self...)
	}
	cmd := exec.Command(self[0], append(self[1:], args...)...)
	// STATE_DIR points where nothing is: were the plugin to start, it would
	// make this folder.
	state := t.TempDir() + "/state"
	cmd.Env = append(os.Environ(), "TARTAN_TEST_MAIN=1", "STATE_DIR="+state)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		rc = exit.ExitCode()
	default:
		t.Fatal(err)
	}
	if _, err := os.Stat(state); err == nil {
		t.Fatalf("tartan %s made the plugin's state folder: it started serving", strings.Join(args, " "))
	}
	return rc, out.String(), errb.String()
}

// A bare tartan prints the commands and exits 2 without serving; the help
// flags print them and exit 0.
func TestBareAndHelp(t *testing.T) {
	rc, out, errs := runMain(t)
	if rc != 2 || out != "" || !strings.Contains(errs, "doctor") || !strings.Contains(errs, "serve") {
		t.Fatalf("tartan: exit %d, stdout %q, stderr:\n%s", rc, out, errs)
	}
	for _, h := range []string{"-h", "--help", "help"} {
		rc, out, errs := runMain(t, h)
		if rc != 0 || errs != "" || !strings.Contains(out, "usage: tartan <command>") || !strings.Contains(out, "rotate-key") {
			t.Fatalf("tartan %s: exit %d, stderr %q, stdout:\n%s", h, rc, errs, out)
		}
	}
	if rc, _, errs := runMain(t, "serve", "--socket"); rc != 2 || !strings.Contains(errs, "flag needs an argument") {
		t.Fatalf("tartan serve --socket: exit %d\n%s", rc, errs)
	}
}

func TestVersion(t *testing.T) {
	rc, out, errs := runMain(t, "version", "--socket", t.TempDir()+"/none.sock")
	if rc != 0 {
		t.Fatalf("tartan version: exit %d\n%s%s", rc, out, errs)
	}
	for _, want := range []string{"tartan", "go1.", "kernel", "plugin  none answers"} {
		if !strings.Contains(out, want) {
			t.Fatalf("tartan version does not say %q:\n%s", want, out)
		}
	}
}
