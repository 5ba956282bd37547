package wireguard

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/crypto/curve25519"
)

// Key is a Curve25519 key, private or public, as WireGuard uses them.
type Key [32]byte

// NewPrivateKey makes a private key (clamped, as wg genkey does).
func NewPrivateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return k, fmt.Errorf("generate a WireGuard key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// Public is the public key of a private key.
func (k Key) Public() Key {
	var p Key
	out, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err == nil { // only a low-order point fails, which a clamped key is not
		copy(p[:], out)
	}
	return p
}

// String is the key in base64, as wg prints it and as the key file holds
// it. Logs and records get public keys only.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// hex is the key as WireGuard's configuration protocol takes it.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// IsZero says whether the key is unset.
func (k Key) IsZero() bool { return k == Key{} }

// ParseKey reads a base64 key (44 characters, as wg prints them).
func ParseKey(s string) (Key, error) {
	var k Key
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, fmt.Errorf("%q is not a WireGuard key (44 characters of base64, 32 bytes)", s)
	}
	copy(k[:], b)
	if k.IsZero() {
		return k, fmt.Errorf("%q is the all-zero key, which WireGuard refuses", s)
	}
	return k, nil
}

// KeyFile is the name of the host's private key file in the state folder.
const KeyFile = "wireguard.key"

// keyFile is what the key file holds.
type keyFile struct {
	PrivateKey string `json:"privateKey"`
	// Rotate is the WG_ROTATE value the key was made for: a different
	// value makes a new key.
	Rotate string `json:"rotate,omitempty"`
}

// LoadKey returns the host's private key from the state folder dir, made
// on first start; a rotate value other than the one the key was made for
// (WG_ROTATE) makes a new key, and so do a missing file and one whose
// content is not a key (a file that cannot be read is an error).
// made says whether the key is new. The file is 0600 and written whole
// (a crash leaves the old key or the new one).
func LoadKey(dir, rotate string) (k Key, made bool, err error) {
	path := filepath.Join(dir, KeyFile)
	b, rerr := os.ReadFile(path)
	if rerr == nil {
		var f keyFile
		if json.Unmarshal(b, &f) == nil && f.Rotate == rotate {
			if k, err = ParseKey(f.PrivateKey); err == nil {
				return k, false, os.Chmod(path, 0o600)
			}
		}
	} else if !errors.Is(rerr, fs.ErrNotExist) {
		return k, false, fmt.Errorf("read the WireGuard key %s: %w", path, rerr)
	}
	if k, err = NewPrivateKey(); err != nil {
		return k, false, err
	}
	return k, true, SaveKey(dir, k, rotate)
}

// SaveKey writes the host's private key to the state folder.
func SaveKey(dir string, k Key, rotate string) error {
	path := filepath.Join(dir, KeyFile)
	b, err := json.Marshal(keyFile{PrivateKey: k.String(), Rotate: rotate})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, KeyFile+".*") // 0600
	if err != nil {
		return fmt.Errorf("save the WireGuard key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("save the WireGuard key %s: %w", path, err)
	}
	return nil
}
