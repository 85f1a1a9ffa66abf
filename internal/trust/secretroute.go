package trust

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/membership"
)

// The cluster's secrets (the join token and the management credential) are held by nodes only:
// the FSM keeps their hashes (fsm.Security), so a raft snapshot or log admits nobody. A node
// whose secret does not match the hash (a rotation elsewhere, a node that joined after the
// cluster was made) asks the other nodes for it over the internode channel, checks what it gets
// against the hash, and keeps it in memory and in its data dir, where the CLI on that node finds
// it. Only a caller whose certificate names a node of this cluster gets an answer.

// SecretPath is the internode route of the cluster's secrets (HandleSecret).
const SecretPath = "/v1/internode/secret/{name}"

// The secrets a node may ask another for (the {name} of SecretPath).
const (
	SecretJoinToken  = "join-token"
	SecretManagement = "management-token"
)

// secretFetchTimeout bounds one ask of one peer: a node that does not answer quickly is skipped
// for the next, so one frozen peer does not hold the others back.
const secretFetchTimeout = 3 * time.Second

// secretRetryMax bounds the wait between rounds of asking while no peer has a secret.
const secretRetryMax = 30 * time.Second

// secretReply is the secret route's answer.
type secretReply struct {
	Secret string `json:"secret"`
}

// HandleSecret answers another node of this cluster (SecretPath) with this node's copy of a
// secret, only when that copy matches the hash the FSM holds.
func (t *Trust) HandleSecret(w http.ResponseWriter, r *http.Request) {
	caller := ""
	if t.cfg.Caller != nil {
		caller = t.cfg.Caller(r.Context())
	}
	if t.insecure || caller == "" {
		t.log.Warn("refused a cluster secret to a caller whose certificate names no node", "remote", r.RemoteAddr)
		writeError(w, http.StatusForbidden, "forbidden", "only a node of this cluster, named in its certificate, may ask for the cluster's secrets")
		return
	}
	name := r.PathValue("name")
	cur := t.cfg.FSM.Security()
	var secret string
	switch name {
	case SecretJoinToken:
		if tok, err := t.JoinToken(); err == nil && fsm.SecretMatches(tok.Secret, cur.JoinSecretHash) {
			secret = tok.Encode()
		}
	case SecretManagement:
		if c := t.ManagementCredential(); fsm.SecretMatches(c, cur.ManagementHash) {
			secret = c
		}
	default:
		writeError(w, http.StatusNotFound, "not_found", "no such secret: "+api.Truncate(name))
		return
	}
	if secret == "" {
		writeError(w, http.StatusNotFound, "secret_unknown", "this node does not hold the cluster's current "+name)
		return
	}
	t.log.Debug("gave a cluster secret to a node", "secret", name, "to", caller)
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, secretReply{Secret: secret})
}

// missingSecrets are the secrets whose hash the FSM holds and this node's copy does not match.
func (t *Trust) missingSecrets() []string {
	if t.insecure {
		return nil
	}
	cur := t.cfg.FSM.Security()
	var out []string
	if t.ca != nil && cur.JoinSecretHash != "" {
		tok := t.localToken.Load()
		if tok == nil || tok.Fingerprint != t.ca.Fingerprint() || !fsm.SecretMatches(tok.Secret, cur.JoinSecretHash) {
			out = append(out, SecretJoinToken)
		}
	}
	if cur.ManagementHash != "" && !fsm.SecretMatches(t.ManagementCredential(), cur.ManagementHash) {
		out = append(out, SecretManagement)
	}
	return out
}

// fetchSecrets asks the other alive members, in random order, for each of names until one gives
// a copy that matches the FSM's hash, and keeps it. It returns the names no member gave.
func (t *Trust) fetchSecrets(ctx context.Context, names []string) []string {
	if len(names) == 0 || t.cfg.Members == nil {
		return names
	}
	var peers []string
	for _, m := range t.cfg.Members() {
		if m.Name == t.cfg.Name || m.State != membership.StateAlive {
			continue
		}
		if m.Meta.Internode != "" {
			peers = append(peers, m.Meta.Internode)
		} else {
			peers = append(peers, m.GossipAddr)
		}
	}
	rand.Shuffle(len(peers), func(i, j int) { peers[i], peers[j] = peers[j], peers[i] })
	var missing []string
	for _, name := range names {
		got := false
		for _, addr := range peers {
			if ctx.Err() != nil {
				break
			}
			secret, err := t.askSecret(ctx, addr, name)
			if err != nil {
				t.log.Debug("ask a node for a cluster secret", "secret", name, "peer", addr, "err", err)
				continue
			}
			if got = t.keepSecret(name, secret); got {
				break
			}
		}
		if !got {
			missing = append(missing, name)
		}
	}
	return missing
}

// askSecret asks the node at addr (its internode address) for a secret.
func (t *Trust) askSecret(ctx context.Context, addr, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, secretFetchTimeout)
	defer cancel()
	resp, err := t.cfg.Get(ctx, addr, "/v1/internode/secret/"+name)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return "", fmt.Errorf("%s answered %s", addr, resp.Status)
	}
	var rep secretReply
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<10)).Decode(&rep); err != nil {
		return "", fmt.Errorf("%s: unreadable answer: %w", addr, err)
	}
	return rep.Secret, nil
}

// keepSecret keeps a secret a peer gave, in memory and in its file, if it matches the FSM's hash.
func (t *Trust) keepSecret(name, secret string) bool {
	cur := t.cfg.FSM.Security()
	var file string
	switch name {
	case SecretJoinToken:
		tok, err := pki.ParseToken(secret)
		if err != nil || t.ca == nil || tok.Fingerprint != t.ca.Fingerprint() || !fsm.SecretMatches(tok.Secret, cur.JoinSecretHash) {
			return false
		}
		t.localToken.Store(&tok)
		if t.cfg.DataDir != "" {
			file = filepath.Join(t.cfg.DataDir, pki.TokenFile)
			if err := pki.WriteTokenFile(t.cfg.DataDir, tok); err != nil {
				t.log.Warn("got the cluster's join token from a node but could not save it", "err", err)
			}
		}
	case SecretManagement:
		if !pki.ValidManagementCredential(secret) || !fsm.SecretMatches(secret, cur.ManagementHash) {
			return false
		}
		t.management.Store(&secret)
		if file = t.managementFile(); file != "" {
			if err := pki.WriteManagementFile(t.cfg.DataDir, secret); err != nil {
				t.log.Warn("got the cluster's management credential from a node but could not save it", "err", err)
			}
		}
	default:
		return false
	}
	t.log.Info("got the cluster's current "+name+" from another node", "file", file)
	return true
}

// secretsLoop keeps this node's copies of the cluster's secrets matching the FSM's hashes: after
// every change of the state it asks the other nodes for what no longer matches, and while none
// has it, asks again with a growing pause (the node that rotated a secret may not have kept it yet).
// On the leader it also writes the management credential's hash while there is none.
func (t *Trust) secretsLoop(ctx context.Context) {
	if t.insecure {
		return
	}
	const first = 500 * time.Millisecond
	pause := first
	// settled holds the hashes this node's copies last matched: most changes of the state are
	// tasks', which leave them as they were, so there is nothing to check or seed then.
	var settled fsm.Security
	for {
		changed := t.cfg.FSM.Changed()
		cur := t.cfg.FSM.Security()
		if cur.ManagementHash != "" && cur.ManagementHash == settled.ManagementHash && cur.JoinSecretHash == settled.JoinSecretHash {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		settled = fsm.Security{}
		t.seedManagement(ctx)
		missing := t.missingSecrets()
		if len(missing) > 0 {
			missing = t.fetchSecrets(ctx, missing)
		}
		if len(missing) == 0 {
			pause = first
			settled = cur // not a newer state: one the checks above may not have seen
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		// Not on every change meanwhile: a busy cluster changes its state hundreds of times a second.
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, secretRetryMax)
	}
}

// ensureSecret fetches the named secret at once when this node's copy does not match the FSM's
// hash (a caller of GET join-token on a node that has not caught up with a rotation yet).
func (t *Trust) ensureSecret(ctx context.Context, name string) {
	for _, m := range t.missingSecrets() {
		if m == name {
			t.fetchSecrets(ctx, []string{name})
			return
		}
	}
}
