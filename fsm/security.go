package fsm

import (
	"fmt"
	"slices"
	"time"
)

// The cluster's security state: the join secret and the gossip keyring. They live in the
// replicated state so that every node can admit joiners (any node may lead, and any holds the
// cluster CA) and so that a keyring rotation reaches every node, which applies it to its local
// memberlist keyring. fsm only stores them: what a secret or a key means is node's business
// (internal/pki), and fsm checks no more than their shape.

// Command types of the security state.
const (
	CmdJoinSecret CommandType = 9  // replace the cluster's join secret (token rotation)
	CmdKeyring    CommandType = 10 // install, use or remove a gossip key
)

func init() {
	register(Spec[JoinSecret]{Type: CmdJoinSecret, Name: "join_secret", Since: 1, Forwardable: true, Apply: (*FSM).applyJoinSecret})
	register(Spec[KeyringOp]{Type: CmdKeyring, Name: "keyring", Since: 1, Forwardable: true, Apply: (*FSM).applyKeyring})
}

// JoinSecret sets the secret half of the cluster's join token (the CA fingerprint is the other).
type JoinSecret struct {
	Secret string `msgpack:"secret"`
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
	JoinSecret string  `msgpack:"join_secret,omitempty"`
	Keyring    Keyring `msgpack:"keyring"`
}

func (s Security) zero() bool {
	return s.JoinSecret == "" && s.Keyring.Primary == "" && len(s.Keyring.Keys) == 0
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
	f.security.JoinSecret = p.Secret
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
