package fastpath

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"
)

// The binary embeds the committed object of its byte order, byte for byte:
// on arm64 (make check-arm64 runs this under qemu) the very object that
// TestLoadsWithThePluginsCapabilities loads into the kernel on amd64, since
// BPF byte code depends on the byte order only, not on the CPU.
func TestEmbeddedObject(t *testing.T) {
	name := "fastpath_bpfel.o"
	if binary.NativeEndian.Uint16([]byte{0, 1}) == 1 {
		name = "fastpath_bpfeb.o"
	}
	want, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(_FastpathBytes, want) {
		t.Fatalf("the embedded fast path object (%d bytes) is not %s (%d bytes): run make bpf", len(_FastpathBytes), name, len(want))
	}
}
