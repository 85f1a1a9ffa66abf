package fsm

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/taskworker/taskworker/internal/acl"
)

// The cluster's security state: hashes of the join secret and of the management credential, and
// the gossip keyring. They live in the replicated state so that every node can admit joiners and
// check the management credential (any node may lead, and any holds the cluster CA), and so that
// a keyring rotation reaches every node, which applies it to its local memberlist keyring.
//
// The secrets themselves are never in the replicated state, so a raft snapshot or log alone
// admits nobody: only their SHA-256 ("sha256:<hex>", HashSecret) is. The nodes that know a secret
// keep it in a 0600 file of their data dir. fsm only stores them: what a secret or a key means is
// node's business (internal/pki), and fsm checks no more than their shape.

// Command types of the security state.
const (
	CmdJoinSecret CommandType = 9  // replace the cluster's join secret (token rotation)
	CmdKeyring    CommandType = 10 // install, use or remove a gossip key
	CmdManagement CommandType = 24 // set the hash of the cluster's management credential
)

func init() {
	register(Spec[JoinSecret]{Type: CmdJoinSecret, Name: "join_secret", Since: 1, Apply: (*FSM).applyJoinSecret})
	register(Spec[KeyringOp]{Type: CmdKeyring, Name: "keyring", Since: 1, Apply: (*FSM).applyKeyring})
	register(Spec[Management]{Type: CmdManagement, Name: "management", Since: 4, Apply: (*FSM).applyManagement})

	registerTable(Table[Security]{
		Name: "security",
		Pos:  40,
		// Absent while unused: snapshots and digests of clusters without it are those of
		// releases before it.
		Capture: func(f *FSM) (Security, bool) { return f.security.clone(), !f.security.zero() },
		Install: func(f *FSM, s *Security) {
			f.security = Security{}
			if s != nil {
				f.security = s.hashed()
			}
		},
		Digest: func(f *FSM, put func(any)) {
			if !f.security.zero() {
				put("security")
				put(f.security)
			}
		},
	})
}

// hashPrefix marks a secret's hash as the state keeps it.
const hashPrefix = "sha256:"

// HashSecret is the form in which the state keeps a secret: "sha256:" and the hex SHA-256 of it
// (acl.HashSecret, as for ACL tokens).
// The secrets hashed are random (32 bytes or more), so a plain hash needs no salt or stretching.
func HashSecret(secret string) string { return hashPrefix + acl.HashSecret(secret) }

// IsSecretHash reports whether s has the form HashSecret returns.
func IsSecretHash(s string) bool {
	h, ok := strings.CutPrefix(s, hashPrefix)
	if !ok || len(h) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

// SecretMatches reports, in time independent of where they differ, whether secret hashes to
// hash; never for an empty secret or hash.
func SecretMatches(secret, hash string) bool {
	if secret == "" || hash == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(hash)) == 1
}

// JoinSecret sets the secret half of the cluster's join token (the CA fingerprint is the other).
// Secret is its hash (HashSecret); a log entry of a release that replicated the secret itself
// holds the secret, which Apply hashes, so the state never keeps it.
type JoinSecret struct {
	Secret string `msgpack:"secret"`
}

// NeedsProtocol implements NeedsProtocol: a replica before protocol 4 would take the hash for the
// secret and refuse every joiner.
func (p *JoinSecret) NeedsProtocol() int {
	if IsSecretHash(p.Secret) {
		return 4
	}
	return 0
}

// Management sets the hash (HashSecret) of the cluster's management credential: the secret that
// opens the operator routes (join token, keyring) on a secure cluster, with or without ACLs.
type Management struct {
	Hash string `msgpack:"hash"`
}

// Keyring operations (KeyringOp.Op).
const (
	KeyInstall = "install" // add a key; on an empty keyring it becomes the primary
	KeyUse     = "use"     // make an installed key the primary (the one gossip encrypts with)
	KeyRemove  = "remove"  // drop a key; never the primary
)

// KeyringOp changes the gossip keyring. Key is the key's text (base64), as operators give it.
type KeyringOp struct {
	Op  string `msgpack:"op"`
	Key string `msgpack:"key"`
}

// Keyring is the cluster's gossip keyring: Keys in install order, Primary among them.
type Keyring struct {
	Primary string   `msgpack:"primary"`
	Keys    []string `msgpack:"keys"`
}

// Security is the replicated security state.
type Security struct {
	// JoinSecretHash is HashSecret of the join token's secret.
	JoinSecretHash string  `msgpack:"join_secret,omitempty"`
	Keyring        Keyring `msgpack:"keyring"`
	// ManagementHash is HashSecret of the management credential ("" until the first leader
	// wrote it).
	ManagementHash string `msgpack:"management,omitempty"`
}

func (s Security) zero() bool {
	return s.JoinSecretHash == "" && s.ManagementHash == "" && s.Keyring.Primary == "" && len(s.Keyring.Keys) == 0
}

// hashed is s with a join secret replicated by an older release replaced by its hash.
func (s Security) hashed() Security {
	if s.JoinSecretHash != "" && !IsSecretHash(s.JoinSecretHash) {
		s.JoinSecretHash = HashSecret(s.JoinSecretHash)
	}
	return s
}

func (s Security) clone() Security {
	s.Keyring.Keys = slices.Clone(s.Keyring.Keys)
	return s
}

// Security returns a copy of the security state.
func (f *FSM) Security() Security {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.security.clone()
}

// maxKeys bounds the keyring: rotation needs two keys at a time, a few more are an operator's
// leftovers, and every node holds and tries each on every gossip message.
const maxKeys = 16

func (f *FSM) applyJoinSecret(_ uint64, _ time.Time, p *JoinSecret) ([]ItemResult, error) {
	if p.Secret == "" {
		return nil, fmt.Errorf("%w: empty join secret", ErrBadCommand)
	}
	hash := p.Secret
	if !IsSecretHash(hash) { // a secret replicated by an older release
		hash = HashSecret(hash)
	}
	f.security.JoinSecretHash = hash
	return nil, nil
}

func (f *FSM) applyManagement(_ uint64, _ time.Time, p *Management) ([]ItemResult, error) {
	if !IsSecretHash(p.Hash) {
		return nil, fmt.Errorf("%w: the management credential's hash must be %s<64 hex digits>", ErrBadCommand, hashPrefix)
	}
	f.security.ManagementHash = p.Hash
	return nil, nil
}

func (f *FSM) applyKeyring(_ uint64, _ time.Time, p *KeyringOp) ([]ItemResult, error) {
	if p.Key == "" {
		return nil, fmt.Errorf("%w: keyring %s needs a key", ErrBadCommand, p.Op)
	}
	ring := &f.security.Keyring
	installed := slices.Contains(ring.Keys, p.Key)
	switch p.Op {
	case KeyInstall:
		if installed {
			return nil, nil
		}
		if len(ring.Keys) >= maxKeys {
			return nil, fmt.Errorf("%w: the keyring holds %d keys already; remove one first", ErrKeyring, maxKeys)
		}
		ring.Keys = append(ring.Keys, p.Key)
		if ring.Primary == "" {
			ring.Primary = p.Key
		}
	case KeyUse:
		if !installed {
			return nil, fmt.Errorf("%w: install the key before using it", ErrKeyNotInstalled)
		}
		ring.Primary = p.Key
	case KeyRemove:
		if !installed {
			return nil, fmt.Errorf("%w: no such key in the keyring", ErrKeyNotInstalled)
		}
		if ring.Primary == p.Key {
			return nil, fmt.Errorf("%w: the primary key cannot be removed; use another key first", ErrKeyring)
		}
		ring.Keys = slices.DeleteFunc(ring.Keys, func(k string) bool { return k == p.Key })
	default:
		return nil, fmt.Errorf("%w: unknown keyring operation %q", ErrBadCommand, truncate(p.Op))
	}
	return nil, nil
}

func truncate(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}
