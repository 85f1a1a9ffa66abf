package endpoint

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// ACLs (Config.ACL): the state lives in the FSM (fsm/acl.go), so every node resolves credentials
// from its own replica. A write reaches the leader as the caller's request, credential included
// (internal/forward), and the leader's API handlers authorize it against the leader's replica: a
// follower cannot be used to do what the caller may not, nor what its own replica, behind the
// leader's, still allows.

// ACLEndpoint serves ACLs as httpapi's ACL sees them: resolving credentials, and the policies and
// tokens.
type ACLEndpoint struct{ srv *Server }

// authorizer resolves credentials against this node's replica of the ACL state.
func (srv *Server) authorizer() *acl.Authorizer {
	return acl.NewAuthorizer(srv.cfg.FSM.ACL(), srv.cfg.JWT)
}

// kindManagement is the identity of the cluster's management credential (internal/trust), which is
// no ACL token but may do everything an ACL management token may.
const kindManagement acl.Kind = "management"

// Resolve is who credential is on this node: the management identity for the cluster's
// management credential, else what the ACL state makes of it.
func (e *ACLEndpoint) Resolve(credential string, now time.Time) (*acl.Identity, error) {
	if e.srv.cfg.Trust.IsManagement(credential) {
		return &acl.Identity{Principal: string(kindManagement), Kind: kindManagement, Management: true}, nil
	}
	return e.srv.authorizer().Resolve(credential, now)
}

func (e *ACLEndpoint) Bootstrapped() bool { return e.srv.cfg.FSM.ACL().Bootstrapped() }

// proposeACL applies an ACL command for caller and maps its refusals to API errors.
func (e *ACLEndpoint) proposeACL(ctx context.Context, caller httpapi.Caller, body fsm.Payload) error {
	res, err := e.srv.propose(ctx, &fsm.Command{Body: body})
	if err == nil {
		err = e.srv.waitIndex(ctx, res.Index) // the caller reads its own write on this node
	}
	switch {
	case errors.Is(err, fsm.ErrACLBootstrapped):
		return api.Errorf(api.CodeACLBootstrapped, "ACLs were bootstrapped already; the bootstrap token is shown only once")
	case errors.Is(err, fsm.ErrACLNotFound):
		return api.Errorf(api.CodeNotFound, "%v", err)
	}
	return e.srv.apiError(err)
}

// bootstrapper proposes the bootstrap token; acl.Bootstrap makes it.
type bootstrapper struct {
	ctx context.Context
	e   *ACLEndpoint
}

func (p bootstrapper) ApplyBootstrap(tok acl.Token) error {
	// The token is made anew on every try, and its secret is shown only in this try's reply: a
	// repeat could show no secret (withoutRequestID). A bootstrap retried after its first try
	// applied answers acl_bootstrapped, as before.
	return p.e.proposeACL(withoutRequestID(p.ctx), httpapi.Caller{}, &fsm.ACLBootstrap{Token: tok})
}

func (e *ACLEndpoint) Bootstrap(ctx context.Context) (api.ACLToken, error) {
	tok, secret, err := acl.Bootstrap(bootstrapper{ctx, e}, time.Now())
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			return api.ACLToken{}, ae
		}
		return api.ACLToken{}, err
	}
	return e.withSecret(tok.AccessorID, secret)
}

// withSecret is the stored token (as Apply stamped it) with its secret, for the one reply that
// shows it.
func (e *ACLEndpoint) withSecret(accessorID string, secret acl.Secret) (api.ACLToken, error) {
	stored, ok := e.srv.cfg.FSM.ACL().Token(accessorID)
	if !ok {
		return api.ACLToken{}, fmt.Errorf("token %s applied but not found", accessorID)
	}
	out := toAPIACLToken(stored)
	out.SecretID = secret.Reveal()
	return out, nil
}

func (e *ACLEndpoint) SetPolicy(ctx context.Context, caller httpapi.Caller, p api.ACLPolicy) (api.ACLPolicy, error) {
	ap := fromAPIPolicy(p)
	if err := ap.Validate(); err != nil {
		return api.ACLPolicy{}, api.Errorf(api.CodeInvalidPolicy, "%v", err)
	}
	if err := e.proposeACL(ctx, caller, &fsm.ACLPolicySet{Policy: ap}); err != nil {
		return api.ACLPolicy{}, err
	}
	return toAPIPolicy(ap), nil
}

func (e *ACLEndpoint) Policies(context.Context) ([]api.ACLPolicy, error) {
	ps := e.srv.cfg.FSM.ACL().Policies()
	out := make([]api.ACLPolicy, 0, len(ps))
	for _, p := range ps {
		out = append(out, toAPIPolicy(p))
	}
	return out, nil
}

func (e *ACLEndpoint) DeletePolicy(ctx context.Context, caller httpapi.Caller, name string) error {
	if _, ok := e.srv.cfg.FSM.ACL().Policy(name); !ok {
		return e.srv.goneUnlessRepeated(ctx, api.Errorf(api.CodeNotFound, "policy %q not found", api.Truncate(name)))
	}
	return e.proposeACL(ctx, caller, &fsm.ACLPolicyDelete{Name: name})
}

// maxTokenTTL bounds a token's lifetime; longer-lived callers use tokens without a TTL on
// purpose, not by an overflowing duration.
const maxTokenTTL = 10 * 365 * 24 * time.Hour

func (e *ACLEndpoint) CreateToken(ctx context.Context, caller httpapi.Caller, req api.ACLTokenRequest) (api.ACLToken, error) {
	if len(req.Policies) == 0 {
		return api.ACLToken{}, api.Errorf(api.CodeInvalidTokenRequest, "a token needs at least one policy")
	}
	for _, p := range req.Policies {
		if _, ok := e.srv.cfg.FSM.ACL().Policy(p); !ok {
			return api.ACLToken{}, api.Errorf(api.CodeInvalidTokenRequest, "no policy named %q", api.Truncate(p))
		}
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 || d > maxTokenTTL {
			return api.ACLToken{}, api.Errorf(api.CodeInvalidTokenRequest, "ttl must be a positive duration like 24h, at most %s; got %q", maxTokenTTL, api.Truncate(req.TTL))
		}
		ttl = d
	}
	// The secret is made here, on the node that shows it, and only its hash is proposed: it never
	// crosses to another node or into the log.
	tok, secret, err := acl.NewToken(req.Description, req.Policies, false, time.Now(), time.Time{})
	if err != nil {
		return api.ACLToken{}, err
	}
	if err := tok.Validate(); err != nil {
		return api.ACLToken{}, api.Errorf(api.CodeInvalidTokenRequest, "%v", err)
	}
	// The token and its secret are made anew on every try, and the secret is shown only in this
	// try's reply: a repeat could show none (withoutRequestID). A create retried after its first
	// try applied makes a second token, whose secret the caller gets.
	if err := e.proposeACL(withoutRequestID(ctx), caller, &fsm.ACLTokenCreate{Token: tok, TTL: fsm.Duration(ttl)}); err != nil {
		return api.ACLToken{}, err
	}
	return e.withSecret(tok.AccessorID, secret)
}

func (e *ACLEndpoint) Tokens(context.Context) ([]api.ACLToken, error) {
	ts := e.srv.cfg.FSM.ACL().Tokens()
	out := make([]api.ACLToken, 0, len(ts))
	for _, t := range ts {
		out = append(out, toAPIACLToken(t))
	}
	return out, nil
}

func (e *ACLEndpoint) DeleteToken(ctx context.Context, caller httpapi.Caller, accessorID string) error {
	if _, ok := e.srv.cfg.FSM.ACL().Token(accessorID); !ok {
		return e.srv.goneUnlessRepeated(ctx, api.Errorf(api.CodeNotFound, "token %q not found", api.Truncate(accessorID)))
	}
	return e.proposeACL(ctx, caller, &fsm.ACLTokenDelete{AccessorID: accessorID})
}

func (e *ACLEndpoint) Token(_ context.Context, accessorID string) (api.ACLToken, bool) {
	t, ok := e.srv.cfg.FSM.ACL().Token(accessorID)
	if !ok {
		return api.ACLToken{}, false
	}
	return toAPIACLToken(t), true
}

func toAPIPolicy(p acl.Policy) api.ACLPolicy {
	out := api.ACLPolicy{Name: p.Name, Description: p.Description}
	for _, r := range p.Rules {
		caps := make([]string, 0, len(r.Capabilities))
		for _, c := range r.Capabilities {
			caps = append(caps, string(c))
		}
		out.Rules = append(out.Rules, api.ACLRule{TaskType: r.TaskType, Capabilities: caps})
	}
	for _, c := range p.Cluster {
		out.Cluster = append(out.Cluster, string(c))
	}
	if p.Quota != nil {
		q := api.ACLQuota(*p.Quota)
		out.Quota = &q
	}
	return out
}

func fromAPIPolicy(p api.ACLPolicy) acl.Policy {
	out := acl.Policy{Name: p.Name, Description: p.Description}
	for _, r := range p.Rules {
		caps := make([]acl.Capability, 0, len(r.Capabilities))
		for _, c := range r.Capabilities {
			caps = append(caps, acl.Capability(c))
		}
		out.Rules = append(out.Rules, acl.Rule{TaskType: r.TaskType, Capabilities: caps})
	}
	for _, c := range p.Cluster {
		out.Cluster = append(out.Cluster, acl.ClusterRight(c))
	}
	if p.Quota != nil {
		q := acl.Quota(*p.Quota)
		out.Quota = &q
	}
	return out
}

// toAPIACLToken shows a token without its secret hash.
func toAPIACLToken(t acl.Token) api.ACLToken {
	out := api.ACLToken{AccessorID: t.AccessorID, Description: t.Description, Policies: slices.Clone(t.Policies),
		Management: t.Management, CreateTime: t.CreateTime}
	if out.Policies == nil {
		out.Policies = []string{}
	}
	if !t.ExpirationTime.IsZero() {
		exp := t.ExpirationTime
		out.ExpirationTime = &exp
	}
	return out
}
