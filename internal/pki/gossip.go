package pki

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/memberlist"
)

// GossipKeySize is the size of keys GenerateGossipKey makes: AES-256, as `consul keygen`.
const GossipKeySize = 32

// ErrBadGossipKey means text that is not a base64 AES-128/192/256 key.
var ErrBadGossipKey = errors.New("invalid gossip key")

// GenerateGossipKey makes a random 32-byte key for memberlist's keyring.
func GenerateGossipKey() []byte {
	k := make([]byte, GossipKeySize)
	// crypto/rand.Read never fails (it crashes the program instead), per its documentation.
	_, _ = rand.Read(k)
	return k
}

// EncodeGossipKey is the standard base64 text of a key, the form --encrypt takes and Consul uses.
func EncodeGossipKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// DecodeGossipKey parses --encrypt KEY: standard base64 of 16, 24 or 32 bytes (memberlist's rule,
// checked by memberlist.ValidateKey). Surrounding white space is ignored. Errors never echo the key.
func DecodeGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("%w: not standard base64", ErrBadGossipKey)
	}
	if err := memberlist.ValidateKey(k); err != nil {
		return nil, fmt.Errorf("%w: %d bytes, want 16, 24 or 32", ErrBadGossipKey, len(k))
	}
	return k, nil
}

// ReadGossipKeyFile reads --encrypt-file: one base64 key.
func ReadGossipKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read gossip key: %w", err)
	}
	k, err := DecodeGossipKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("read gossip key %s: %w", path, err)
	}
	return k, nil
}

// KeyringFile holds a node's gossip keyring in its TLS dir: base64 keys, primary first.
const KeyringFile = "keyring.json"

// keyringJSON is KeyringFile's content.
type keyringJSON struct {
	Keys []string `json:"keys"` // base64, primary first
}

// LoadKeyring reads the keyring SaveKeyring wrote in dir, primary first. An error wraps
// fs.ErrNotExist when there is none.
func LoadKeyring(dir string) ([][]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, KeyringFile))
	if err != nil {
		return nil, fmt.Errorf("read gossip keyring: %w", err)
	}
	var kj keyringJSON
	if err := json.Unmarshal(b, &kj); err != nil {
		return nil, fmt.Errorf("read gossip keyring: %w", err)
	}
	var keys [][]byte
	for _, s := range kj.Keys {
		k, err := DecodeGossipKey(s)
		if err != nil {
			return nil, fmt.Errorf("read gossip keyring: %w", err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("read gossip keyring: no keys")
	}
	return keys, nil
}

// SaveKeyring writes keys, primary first, to dir's keyring file, mode 0600, atomically.
func SaveKeyring(dir string, keys [][]byte) error {
	var kj keyringJSON
	for _, k := range keys {
		kj.Keys = append(kj.Keys, EncodeGossipKey(k))
	}
	b, err := json.Marshal(kj)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, KeyringFile), b, 0o600); err != nil {
		return fmt.Errorf("save gossip keyring: %w", err)
	}
	return nil
}
