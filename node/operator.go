package node

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/internal/trust"
	"github.com/taskworker/taskworker/membership"
)

// The operator routes' side of apiBackend: the join token and the gossip keyring, both kept in
// the FSM and held by this node's trust (internal/trust).

func notSecure(n *Node) error {
	if n.trust.Insecure() {
		return api.Errorf(api.CodeNotSecure, "this cluster runs --insecure: it has no join token and no gossip keyring")
	}
	return api.Errorf(api.CodeNotSecure, "this cluster uses operator certificates: nodes join with their own certificates, not a token")
}

func (b apiBackend) JoinToken(ctx context.Context) (api.JoinToken, error) {
	if b.n.trust.Insecure() || b.n.trust.CA() == nil {
		return api.JoinToken{}, notSecure(b.n)
	}
	tok, err := b.n.trust.CurrentJoinToken(ctx)
	if err != nil {
		return api.JoinToken{}, api.Errorf(api.CodeNoLeader, "this node could not get the current join token from the other nodes (the node that rotated it may be down); retry")
	}
	return api.JoinToken{Token: tok.Encode()}, nil
}

// RotateJoinToken proposes the new secret's hash with caller's credential: through a follower,
// the leader checks the caller again (authorizeForward), so a credential revoked at the leader
// cannot rotate the token through a follower that has not applied the revocation yet.
func (b apiBackend) RotateJoinToken(ctx context.Context, caller httpapi.Caller) (api.JoinToken, error) {
	n := b.n
	if n.trust.Insecure() || n.trust.CA() == nil {
		return api.JoinToken{}, notSecure(n)
	}
	// Only the fingerprint is kept: a rotation needs no knowledge of the old secret.
	tok, err := pki.NewToken(n.trust.CA().Fingerprint())
	if err != nil {
		return api.JoinToken{}, err
	}
	res, err := n.internode.Propose(ctx, &fsm.Command{Body: &fsm.JoinSecret{Secret: fsm.HashSecret(tok.Secret)}})
	if err != nil {
		return api.JoinToken{}, toAPIError(err)
	}
	n.trust.SetJoinToken(tok)
	_ = n.internode.WaitIndex(ctx, res.Index)
	if n.cfg.DataDir != "" {
		if err := pki.WriteTokenFile(n.cfg.DataDir, tok); err != nil {
			n.log.Warn("the join token was rotated but the join-token file not rewritten", "err", err)
		}
	}
	n.log.Info("rotated the join token: the old one is refused from now on")
	return api.JoinToken{Token: tok.Encode()}, nil
}

func (b apiBackend) Keyring(context.Context) (api.Keyring, error) {
	n := b.n
	if n.trust.Insecure() {
		return api.Keyring{}, notSecure(n)
	}
	ring := n.fsm.Security().Keyring
	if len(ring.Keys) == 0 { // the first leader has not written it yet: this node's own
		keys := n.trust.LocalKeys()
		ring.Primary = pki.EncodeGossipKey(keys[0])
		for _, k := range keys {
			ring.Keys = append(ring.Keys, pki.EncodeGossipKey(k))
		}
	}
	out := api.Keyring{Primary: ring.Primary, Keys: ring.Keys, Nodes: map[string]int{}}
	byID := map[string]string{}
	for _, text := range ring.Keys {
		if k, err := pki.DecodeGossipKey(text); err == nil {
			byID[trust.KeyID(k)] = text
		}
		out.Nodes[text] = 0
	}
	for _, m := range n.members.Members() {
		if m.State != membership.StateAlive || m.Meta.Keys == "" {
			continue
		}
		for _, id := range strings.Split(m.Meta.Keys, ",") {
			if text, ok := byID[id]; ok {
				out.Nodes[text]++
			}
		}
	}
	return out, nil
}

// ChangeKeyring proposes the keyring operation with caller's credential, as RotateJoinToken does.
func (b apiBackend) ChangeKeyring(ctx context.Context, caller httpapi.Caller, req api.KeyringRequest) (api.Keyring, error) {
	n := b.n
	if n.trust.Insecure() {
		return api.Keyring{}, notSecure(n)
	}
	k, err := pki.DecodeGossipKey(req.Key)
	if err != nil {
		return api.Keyring{}, api.Errorf(api.CodeInvalidRequest, "%v", err)
	}
	op := map[string]string{api.KeyringInstall: fsm.KeyInstall, api.KeyringUse: fsm.KeyUse, api.KeyringRemove: fsm.KeyRemove}[req.Op]
	if op == "" {
		return api.Keyring{}, api.Errorf(api.CodeInvalidRequest, "unknown keyring operation %q", api.Truncate(req.Op))
	}
	text := pki.EncodeGossipKey(k)
	// A remove is not idempotent in the FSM: when a forward is retried after its first copy
	// committed (forwardWhileLeader), the second copy finds the key gone. The key was installed
	// when the caller asked, so that answer means it is removed, as asked.
	wasInstalled := slices.Contains(n.fsm.Security().Keyring.Keys, text)
	res, err := n.internode.Propose(ctx, &fsm.Command{Body: &fsm.KeyringOp{Op: op, Key: text}})
	switch {
	case op == fsm.KeyRemove && wasInstalled && errors.Is(err, fsm.ErrKeyNotInstalled):
		n.log.Info("gossip keyring operation applied", "op", req.Op, "key_id", trust.KeyID(k))
		return b.Keyring(ctx)
	case errors.Is(err, fsm.ErrKeyNotInstalled):
		return api.Keyring{}, api.Errorf(api.CodeInvalidRequest, "that key is not in the keyring; install it first")
	case errors.Is(err, fsm.ErrKeyring):
		return api.Keyring{}, api.Errorf(api.CodeKeyringConflict, "%v", err)
	case err != nil:
		return api.Keyring{}, toAPIError(err)
	}
	_ = n.internode.WaitIndex(ctx, res.Index)
	n.log.Info("gossip keyring operation applied", "op", req.Op, "key_id", trust.KeyID(k))
	return b.Keyring(ctx)
}

// Digest is this node's FSM digest at the index it has applied (fsm.Digest): a replica's state
// answered in one line, so replicas can be compared without reading every record.
func (b apiBackend) Digest(context.Context) (api.Digest, error) {
	index, sum := b.n.fsm.Digest()
	return api.Digest{Node: b.n.cfg.Name, Index: index, Digest: sum}, nil
}
