package endpoint

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/membership"
)

// OperatorEndpoint serves the operator routes: the join token and the gossip keyring, both kept
// in the FSM and held by this node's trust (internal/trust), and the FSM's digest.
type OperatorEndpoint struct{ srv *Server }

func (srv *Server) notSecure() error {
	if srv.cfg.Trust.Insecure() {
		return api.Errorf(api.CodeNotSecure, "this cluster runs --insecure: it has no join token and no gossip keyring")
	}
	return api.Errorf(api.CodeNotSecure, "this cluster uses operator certificates: nodes join with their own certificates, not a token")
}

func (e *OperatorEndpoint) JoinToken(ctx context.Context) (api.JoinToken, error) {
	tr := e.srv.cfg.Trust
	if tr.Insecure() || tr.CA() == nil {
		return api.JoinToken{}, e.srv.notSecure()
	}
	tok, err := tr.CurrentJoinToken(ctx)
	if err != nil {
		return api.JoinToken{}, api.Errorf(api.CodeNoLeader, "this node could not get the current join token from the other nodes (the node that rotated it may be down); retry")
	}
	return api.JoinToken{Token: tok.Encode()}, nil
}

// RotateJoinToken proposes the new secret's hash. It runs on the leader, which has checked the
// caller's credential against its own replica (internal/forward brings a follower's request
// there), so a credential revoked at the leader cannot rotate the token through a follower that
// has not applied the revocation yet.
func (e *OperatorEndpoint) RotateJoinToken(ctx context.Context, caller httpapi.Caller) (api.JoinToken, error) {
	srv := e.srv
	tr := srv.cfg.Trust
	if tr.Insecure() || tr.CA() == nil {
		return api.JoinToken{}, srv.notSecure()
	}
	// Only the fingerprint is kept: a rotation needs no knowledge of the old secret.
	tok, err := pki.NewToken(tr.CA().Fingerprint())
	if err != nil {
		return api.JoinToken{}, err
	}
	// The token is made anew on every try, and this node keeps the one it proposed (SetJoinToken):
	// a repeat would keep one the FSM never held (withoutRequestID). A rotation retried after its
	// first try applied rotates again, and the reply shows the token in force.
	res, err := srv.propose(withoutRequestID(ctx), &fsm.Command{Body: &fsm.JoinSecret{Secret: fsm.HashSecret(tok.Secret)}})
	if err != nil {
		return api.JoinToken{}, srv.apiError(err)
	}
	tr.SetJoinToken(tok)
	_ = srv.waitIndex(ctx, res.Index)
	if srv.cfg.DataDir != "" {
		if err := pki.WriteTokenFile(srv.cfg.DataDir, tok); err != nil {
			srv.log.Warn("the join token was rotated but the join-token file not rewritten", "err", err)
		}
	}
	srv.log.Info("rotated the join token: the old one is refused from now on")
	return api.JoinToken{Token: tok.Encode()}, nil
}

func (e *OperatorEndpoint) Keyring(context.Context) (api.Keyring, error) {
	srv := e.srv
	if srv.cfg.Trust.Insecure() {
		return api.Keyring{}, srv.notSecure()
	}
	ring := srv.cfg.FSM.Security().Keyring
	if len(ring.Keys) == 0 { // the first leader has not written it yet: this node's own
		keys := srv.cfg.Trust.LocalKeys()
		ring.Primary = pki.EncodeGossipKey(keys[0])
		for _, k := range keys {
			ring.Keys = append(ring.Keys, pki.EncodeGossipKey(k))
		}
	}
	out := api.Keyring{Primary: ring.Primary, Keys: ring.Keys, Nodes: map[string]int{}}
	byID := map[string]string{}
	for _, text := range ring.Keys {
		if k, err := pki.DecodeGossipKey(text); err == nil {
			byID[srv.cfg.KeyID(k)] = text
		}
		out.Nodes[text] = 0
	}
	for _, m := range srv.cfg.Gossip.Members() {
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

// ChangeKeyring proposes the keyring operation, on the leader, as RotateJoinToken does.
func (e *OperatorEndpoint) ChangeKeyring(ctx context.Context, caller httpapi.Caller, req api.KeyringRequest) (api.Keyring, error) {
	srv := e.srv
	if srv.cfg.Trust.Insecure() {
		return api.Keyring{}, srv.notSecure()
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
	// A remove is not idempotent in the FSM: when a forwarded request is retried after its first
	// try committed (internal/forward), the second try finds the key gone. The key was installed
	// when the caller asked, so that answer means it is removed, as asked.
	wasInstalled := slices.Contains(srv.cfg.FSM.Security().Keyring.Keys, text)
	res, err := srv.propose(ctx, &fsm.Command{Body: &fsm.KeyringOp{Op: op, Key: text}})
	switch {
	case op == fsm.KeyRemove && wasInstalled && errors.Is(err, fsm.ErrKeyNotInstalled):
		srv.log.Info("gossip keyring operation applied", "op", req.Op, "key_id", srv.cfg.KeyID(k))
		return e.Keyring(ctx)
	case errors.Is(err, fsm.ErrKeyNotInstalled):
		return api.Keyring{}, api.Errorf(api.CodeInvalidRequest, "that key is not in the keyring; install it first")
	case errors.Is(err, fsm.ErrKeyring):
		return api.Keyring{}, api.Errorf(api.CodeKeyringConflict, "%v", err)
	case err != nil:
		return api.Keyring{}, srv.apiError(err)
	}
	_ = srv.waitIndex(ctx, res.Index)
	srv.log.Info("gossip keyring operation applied", "op", req.Op, "key_id", srv.cfg.KeyID(k))
	return e.Keyring(ctx)
}

// Digest is this node's FSM digest at the index it has applied (fsm.Digest): a replica's state
// answered in one line, so replicas can be compared without reading every record.
func (e *OperatorEndpoint) Digest(context.Context) (api.Digest, error) {
	index, sum := e.srv.cfg.FSM.Digest()
	return api.Digest{Node: e.srv.cfg.Name, Index: index, Digest: sum}, nil
}
