package trust

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/pki"
)

// JoinPath is the internode route of the join exchange (HandleJoin), the one internode route
// whose caller has no certificate yet.
const JoinPath = "/v1/internode/join"

// ErrJoinRefused: a member refused this node's join token; retrying cannot help.
var ErrJoinRefused = errors.New("join refused")

// JoinToken is the cluster's current join token as this node knows it: the token it holds, when
// its secret matches the hash in the FSM (or, before the first leader wrote the hash, the token
// this node made the cluster with).
func (t *Trust) JoinToken() (pki.Token, error) {
	if t.insecure || t.ca == nil {
		return pki.Token{}, errNoJoinToken
	}
	tok := t.localToken.Load()
	if tok == nil || tok.Fingerprint != t.ca.Fingerprint() {
		return pki.Token{}, errNoJoinToken
	}
	if hash := t.cfg.FSM.Security().JoinSecretHash; hash != "" && !fsm.SecretMatches(tok.Secret, hash) {
		return pki.Token{}, errNoJoinToken
	}
	return *tok, nil
}

// CurrentJoinToken is JoinToken, after fetching the token from the other nodes when this node's
// copy does not match the FSM's hash (rotated elsewhere: only the secret's hash is replicated,
// the nodes hold the secret).
func (t *Trust) CurrentJoinToken(ctx context.Context) (pki.Token, error) {
	tok, err := t.JoinToken()
	if err != nil {
		t.ensureSecret(ctx, SecretJoinToken)
		tok, err = t.JoinToken()
	}
	return tok, err
}

// SetJoinToken makes tok the join token this node holds (in memory: a rotation writes the file
// once its hash is applied).
func (t *Trust) SetJoinToken(tok pki.Token) { t.localToken.Store(&tok) }

// joinSecretOK checks a joiner's secret against the FSM's hash of the join secret (or, before
// the first leader wrote it, against the token this node made the cluster with).
func (t *Trust) joinSecretOK(secret string) bool {
	if hash := t.cfg.FSM.Security().JoinSecretHash; hash != "" {
		return fsm.SecretMatches(secret, hash)
	}
	tok := t.localToken.Load()
	return tok != nil && fsm.SecretMatches(secret, fsm.HashSecret(tok.Secret))
}

// joinReply is the join route's answer: pki's response and the CA key, which every node holds
// (the package doc says why). It travels only over the TLS connection the joiner pinned to the CA.
type joinReply struct {
	pki.JoinResponse
	CAKey string `json:"ca_key"`
}

// HandleJoin is the CA side of the join exchange (JoinPath): it signs a joiner's certificate
// when the joiner presents the cluster's current join token.
func (t *Trust) HandleJoin(w http.ResponseWriter, r *http.Request) {
	if t.insecure || t.ca == nil {
		t.refusedJoin(r, "refused a join: this node admits no joiners (insecure, or operator certificates)")
		writeError(w, http.StatusConflict, "not_secure", "this node does not admit joiners with a token: the cluster runs --insecure or with operator certificates")
		return
	}
	var req pki.JoinRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, pki.MaxJoinRequestBytes)).Decode(&req); err != nil {
		t.refusedJoin(r, "refused a join: unreadable request")
		writeError(w, http.StatusBadRequest, "bad_join_request", "the join request is not valid JSON")
		return
	}
	ring := localKeys(t.keyring)
	resp, err := t.ca.SignJoin(req, pki.SignJoinOptions{Token: pki.Token{Fingerprint: t.ca.Fingerprint()},
		SecretOK: t.joinSecretOK, GossipKeys: ring, Now: time.Now()})
	switch {
	case errors.Is(err, pki.ErrJoinDenied):
		t.refusedJoin(r, "refused a node's join: wrong join token", "joiner", api.Truncate(req.NodeName), "reason", err)
		writeError(w, http.StatusForbidden, "join_refused", err.Error()) // it starts with "join refused"
		return
	case err != nil:
		t.refusedJoin(r, "refused a node's join: bad request", "joiner", api.Truncate(req.NodeName), "reason", err)
		writeError(w, http.StatusBadRequest, "bad_join_request", err.Error())
		return
	}
	keyPEM, err := t.ca.KeyPEM()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal", "encode the CA key")
		return
	}
	t.log.Info("admitted a joining node: signed its certificate", "joiner", req.NodeName, "remote", r.RemoteAddr)
	httpapi.WriteJSON(w, http.StatusOK, joinReply{JoinResponse: resp, CAKey: string(keyPEM)})
}

// refusedJoin counts a refused join and logs it, as often as Config.AllowJoinWarning lets it.
func (t *Trust) refusedJoin(r *http.Request, msg string, args ...any) {
	if t.cfg.JoinRefused != nil {
		t.cfg.JoinRefused()
	}
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	ok, suppressed := true, 0
	if t.cfg.AllowJoinWarning != nil {
		ok, suppressed = t.cfg.AllowJoinWarning(ip)
	}
	if !ok {
		return
	}
	args = append([]any{"remote", r.RemoteAddr}, args...)
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed) // refused since the last line about this address
	}
	t.log.Warn(msg, args...)
}

// writeError writes an error body with the API's shape; the internode routes have codes of their own.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	httpapi.WriteJSON(w, status, api.Error{Message: msg, Code: api.Code(code)})
}

// joinCluster runs the joiner's side of the join exchange against the --join addresses until one
// answers: a refusal (wrong token, another cluster, an insecure cluster) ends it at once, an
// unreachable member is retried, as --join is.
func (t *Trust) joinCluster(ctx context.Context, tok pki.Token) (*pki.JoinResult, *pki.CA, error) {
	key, req, err := pki.NewJoinRequest(tok, t.cfg.Name, t.ips)
	if err != nil {
		return nil, nil, fmt.Errorf("join: %w", err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, nil, fmt.Errorf("join: %w", err)
	}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.PinnedClientConfig(tok.Fingerprint)}}
	defer hc.CloseIdleConnections()
	backoff := 200 * time.Millisecond
	for attempt := 0; ; attempt++ {
		var lastErr error
		for _, addr := range t.cfg.Join {
			res, ca, err := t.joinOnce(ctx, hc, addr, tok, key, body)
			if err == nil {
				return res, ca, nil
			}
			if errors.Is(err, ErrJoinRefused) {
				return nil, nil, err
			}
			lastErr = err
		}
		if attempt%10 == 0 {
			t.log.Warn("no member answered the join yet; retrying", "join", t.cfg.Join, "err", lastErr)
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("join: %w (last error: %v)", ctx.Err(), lastErr)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (t *Trust) joinOnce(ctx context.Context, hc *http.Client, addr string, tok pki.Token, key *ecdsa.PrivateKey, body []byte) (*pki.JoinResult, *pki.CA, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+JoinPath, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		var rh tls.RecordHeaderError
		switch {
		case errors.Is(err, pki.ErrFingerprintMismatch):
			return nil, nil, fmt.Errorf("%w: the node at %s is not of the cluster the join token names (its CA fingerprint differs)", ErrJoinRefused, addr)
		case errors.As(err, &rh):
			return nil, nil, fmt.Errorf("%w: the node at %s does not speak TLS on its gossip port: if that cluster runs --insecure, start this node with --insecure", ErrJoinRefused, addr)
		}
		return nil, nil, fmt.Errorf("join via %s: %w", addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("join via %s: %w", addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e api.Error
		_ = json.Unmarshal(b, &e)
		msg := e.Message
		if msg == "" {
			msg = resp.Status
		}
		if resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusConflict {
			// Said once: the member's message repeats it (twice, from an older release).
			for strings.HasPrefix(msg, ErrJoinRefused.Error()+": ") {
				msg = strings.TrimPrefix(msg, ErrJoinRefused.Error()+": ")
			}
			return nil, nil, fmt.Errorf("%w by %s (%d): %s", ErrJoinRefused, addr, resp.StatusCode, msg)
		}
		return nil, nil, fmt.Errorf("join via %s: %d %s", addr, resp.StatusCode, msg)
	}
	var reply joinReply
	if err := json.Unmarshal(b, &reply); err != nil {
		return nil, nil, fmt.Errorf("join via %s: decode the reply: %w", addr, err)
	}
	res, err := pki.CompleteJoin(tok, key, t.cfg.Name, reply.JoinResponse, time.Now())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: the reply of %s: %w", ErrJoinRefused, addr, err)
	}
	ca, err := pki.ParseCA([]byte(reply.CA), []byte(reply.CAKey))
	if err != nil || ca.Fingerprint() != tok.Fingerprint {
		return nil, nil, fmt.Errorf("%w: the reply of %s holds no usable CA key", ErrJoinRefused, addr)
	}
	return res, ca, nil
}
