package node

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

const internodeSecretPath = "/v1/internode/secret/{name}"

// The secrets a node may ask another for (the {name} of internodeSecretPath).
const (
	secretJoinToken  = "join-token"
	secretManagement = "management-token"
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

// handleSecret answers another node of this cluster with this node's copy of a secret, only when
// that copy matches the hash the FSM holds.
func (n *Node) handleSecret(w http.ResponseWriter, r *http.Request) {
	caller := callerOf(r.Context())
	if n.sec.insecure || caller.name == "" {
		n.log.Warn("refused a cluster secret to a caller whose certificate names no node", "remote", r.RemoteAddr)
		writeError(w, http.StatusForbidden, "forbidden", "only a node of this cluster, named in its certificate, may ask for the cluster's secrets")
		return
	}
	name := r.PathValue("name")
	cur := n.fsm.Security()
	var secret string
	switch name {
	case secretJoinToken:
		if t, err := n.joinToken(); err == nil && fsm.SecretMatches(t.Secret, cur.JoinSecretHash) {
			secret = t.Encode()
		}
	case secretManagement:
		if c := n.managementCredential(); fsm.SecretMatches(c, cur.ManagementHash) {
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
	n.log.Debug("gave a cluster secret to a node", "secret", name, "to", caller.name)
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, secretReply{Secret: secret})
}

// missingSecrets are the secrets whose hash the FSM holds and this node's copy does not match.
func (n *Node) missingSecrets() []string {
	s := n.sec
	if s.insecure {
		return nil
	}
	cur := n.fsm.Security()
	var out []string
	if s.ca != nil && cur.JoinSecretHash != "" {
		t := s.localToken.Load()
		if t == nil || t.Fingerprint != s.ca.Fingerprint() || !fsm.SecretMatches(t.Secret, cur.JoinSecretHash) {
			out = append(out, secretJoinToken)
		}
	}
	if cur.ManagementHash != "" && !fsm.SecretMatches(n.managementCredential(), cur.ManagementHash) {
		out = append(out, secretManagement)
	}
	return out
}

// fetchSecrets asks the other alive members, in random order, for each of names until one gives
// a copy that matches the FSM's hash, and keeps it. It returns the names no member gave.
func (n *Node) fetchSecrets(ctx context.Context, names []string) []string {
	if len(names) == 0 || n.members == nil {
		return names
	}
	var peers []string
	for _, m := range n.members.Members() {
		if m.Name == n.cfg.Name || m.State != membership.StateAlive {
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
			secret, err := n.askSecret(ctx, addr, name)
			if err != nil {
				n.log.Debug("ask a node for a cluster secret", "secret", name, "peer", addr, "err", err)
				continue
			}
			if got = n.keepSecret(name, secret); got {
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
func (n *Node) askSecret(ctx context.Context, addr, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, secretFetchTimeout)
	defer cancel()
	req, err := n.internodeRequest(ctx, http.MethodGet, addr, "/v1/internode/secret/"+name, nil)
	if err != nil {
		return "", err
	}
	resp, err := n.client.Do(req)
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
func (n *Node) keepSecret(name, secret string) bool {
	s := n.sec
	cur := n.fsm.Security()
	var file string
	switch name {
	case secretJoinToken:
		t, err := pki.ParseToken(secret)
		if err != nil || s.ca == nil || t.Fingerprint != s.ca.Fingerprint() || !fsm.SecretMatches(t.Secret, cur.JoinSecretHash) {
			return false
		}
		s.localToken.Store(&t)
		if n.cfg.DataDir != "" {
			file = filepath.Join(n.cfg.DataDir, pki.TokenFile)
			if err := pki.WriteTokenFile(n.cfg.DataDir, t); err != nil {
				n.log.Warn("got the cluster's join token from a node but could not save it", "err", err)
			}
		}
	case secretManagement:
		if !pki.ValidManagementCredential(secret) || !fsm.SecretMatches(secret, cur.ManagementHash) {
			return false
		}
		s.management.Store(&secret)
		if file = n.managementFile(); file != "" {
			if err := pki.WriteManagementFile(n.cfg.DataDir, secret); err != nil {
				n.log.Warn("got the cluster's management credential from a node but could not save it", "err", err)
			}
		}
	default:
		return false
	}
	n.log.Info("got the cluster's current "+name+" from another node", "file", file)
	return true
}

// secretsLoop keeps this node's copies of the cluster's secrets matching the FSM's hashes: after
// every change of the state it asks the other nodes for what no longer matches, and while none
// has it, asks again with a growing pause (the node that rotated a secret may not have kept it yet).
// On the leader it also writes the management credential's hash while there is none.
func (n *Node) secretsLoop(ctx context.Context) {
	if n.sec.insecure {
		return
	}
	const first = 500 * time.Millisecond
	pause := first
	// settled holds the hashes this node's copies last matched: most changes of the state are
	// tasks', which leave them as they were, so there is nothing to check or seed then.
	var settled fsm.Security
	for {
		changed := n.fsm.Changed()
		cur := n.fsm.Security()
		if cur.ManagementHash != "" && cur.ManagementHash == settled.ManagementHash && cur.JoinSecretHash == settled.JoinSecretHash {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			continue
		}
		settled = fsm.Security{}
		n.seedManagement(ctx)
		missing := n.missingSecrets()
		if len(missing) > 0 {
			missing = n.fetchSecrets(ctx, missing)
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
func (n *Node) ensureSecret(ctx context.Context, name string) {
	for _, m := range n.missingSecrets() {
		if m == name {
			n.fetchSecrets(ctx, []string{name})
			return
		}
	}
}
