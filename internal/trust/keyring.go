package trust

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"

	"github.com/hashicorp/memberlist"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/pki"
)

// Keyring is the gossip keyring memberlist encrypts with; nil when insecure.
func (t *Trust) Keyring() *memberlist.Keyring { return t.keyring }

// LocalKeys is this node's gossip keyring, primary first; nil when insecure.
func (t *Trust) LocalKeys() [][]byte {
	if t.keyring == nil {
		return nil
	}
	return localKeys(t.keyring)
}

// KeyIDs is the comma-separated IDs of this node's gossip keys, primary first, as gossip
// metadata carries them; "" when insecure.
func (t *Trust) KeyIDs() string {
	if t.keyring == nil {
		return ""
	}
	return keyIDs(localKeys(t.keyring))
}

// localKeys is the local keyring, primary first.
func localKeys(ring *memberlist.Keyring) [][]byte {
	primary := ring.GetPrimaryKey()
	out := [][]byte{primary}
	for _, k := range ring.GetKeys() {
		if string(k) != string(primary) {
			out = append(out, k)
		}
	}
	return out
}

// KeyID is a short, non-secret name of a gossip key, as gossip metadata carries it.
func KeyID(k []byte) string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:4])
}

// keyIDs is the comma-separated IDs of keys, as gossip metadata carries them.
func keyIDs(keys [][]byte) string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, KeyID(k))
	}
	return strings.Join(out, ",")
}

// Seed runs on a new leader: it writes the join secret's hash, the keyring and the management
// credential's hash into the FSM when they are not there yet (a cluster's first leader, which
// made them locally). A leader of a cluster that has no management credential yet (one made by
// a release before it) makes one; the other nodes fetch it (secretsLoop).
func (t *Trust) Seed(ctx context.Context) {
	if t.insecure {
		return
	}
	cur := t.cfg.FSM.Security()
	var cmds []*fsm.Command
	if tok := t.localToken.Load(); cur.JoinSecretHash == "" && tok != nil && t.ca != nil && tok.Fingerprint == t.ca.Fingerprint() {
		cmds = append(cmds, &fsm.Command{Body: &fsm.JoinSecret{Secret: fsm.HashSecret(tok.Secret)}})
	}
	if len(cur.Keyring.Keys) == 0 {
		for _, k := range localKeys(t.keyring) { // the first installed becomes the primary
			cmds = append(cmds, &fsm.Command{Body: &fsm.KeyringOp{Op: fsm.KeyInstall, Key: pki.EncodeGossipKey(k)}})
		}
	}
	for _, c := range cmds {
		cctx, cancel := context.WithTimeout(ctx, writeTimeout)
		_, err := t.cfg.Apply(cctx, c)
		cancel()
		if errors.Is(err, fsm.ErrProtocolTooOld) {
			t.log.Info("the cluster's security state waits for every node to be upgraded", "command", c.Type().String(), "err", err)
			return
		}
		if err != nil {
			t.log.Warn("write the cluster's security state", "command", c.Type().String(), "err", err)
			return
		}
	}
	t.seedManagement(ctx)
}

// keyringLoop makes this node follow the FSM's keyring: its memberlist keyring (install, use,
// remove, in that order, so it never drops a key it still needs), the keyring file, the key IDs
// it gossips.
func (t *Trust) keyringLoop(ctx context.Context) {
	for {
		changed := t.cfg.FSM.Changed()
		if want := t.cfg.FSM.Security().Keyring; len(want.Keys) > 0 {
			t.followKeyring(want)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

func (t *Trust) followKeyring(want fsm.Keyring) {
	ring := t.keyring
	var wantKeys [][]byte
	var primary []byte
	for _, text := range want.Keys {
		k, err := pki.DecodeGossipKey(text)
		if err != nil {
			t.log.Error("the cluster keyring holds a key that is not valid; ignoring it", "key_id", "?", "err", err)
			continue
		}
		wantKeys = append(wantKeys, k)
		if text == want.Primary {
			primary = k
		}
	}
	if primary == nil {
		return
	}
	before := localKeys(ring)
	for _, k := range wantKeys {
		if !slices.ContainsFunc(ring.GetKeys(), func(h []byte) bool { return string(h) == string(k) }) {
			if err := ring.AddKey(k); err != nil {
				t.log.Error("install gossip key", "key_id", KeyID(k), "err", err)
			}
		}
	}
	if string(ring.GetPrimaryKey()) != string(primary) {
		if err := ring.UseKey(primary); err != nil {
			t.log.Error("use gossip key", "key_id", KeyID(primary), "err", err)
		}
	}
	for _, k := range ring.GetKeys() {
		if !slices.ContainsFunc(wantKeys, func(h []byte) bool { return string(h) == string(k) }) {
			if err := ring.RemoveKey(k); err != nil {
				t.log.Error("remove gossip key", "key_id", KeyID(k), "err", err)
			}
		}
	}
	after := localKeys(ring)
	if slices.EqualFunc(before, after, func(a, b []byte) bool { return string(a) == string(b) }) {
		return
	}
	if err := pki.SaveKeyring(t.dir, after); err != nil {
		t.log.Error("gossip keyring changed but not saved; a restart would use the old one", "err", err)
	}
	t.log.Info("gossip keyring changed", "primary", KeyID(after[0]), "keys", keyIDs(after))
	if t.cfg.GossipKeyIDs != nil {
		if err := t.cfg.GossipKeyIDs(keyIDs(after)); err != nil {
			t.log.Debug("gossip the new key IDs", "err", err)
		}
	}
}
