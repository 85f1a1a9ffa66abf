package pki

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
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
