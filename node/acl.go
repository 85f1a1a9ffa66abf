package node

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

// aclBackend is the node as httpapi's ACL sees it.
type aclBackend struct{ n *Node }

var _ httpapi.ACL = aclBackend{}

// authorizer resolves credentials against this node's replica of the ACL state.
func (n *Node) authorizer() *acl.Authorizer { return acl.NewAuthorizer(n.fsm.ACL(), n.cfg.JWT) }

func (b aclBackend) Resolve(credential string, now time.Time) (*acl.Identity, error) {
	return b.n.resolve(credential, now)
}

// kindManagement is the identity of the cluster's management credential (internal/trust), which is
// no ACL token but may do everything an ACL management token may.
const kindManagement acl.Kind = "management"

// resolve is who credential is on this node: the management identity for the cluster's
// management credential, else what the ACL state makes of it.
func (n *Node) resolve(credential string, now time.Time) (*acl.Identity, error) {
	if n.trust.IsManagement(credential) {
		return &acl.Identity{Principal: string(kindManagement), Kind: kindManagement, Management: true}, nil
	}
	return n.authorizer().Resolve(credential, now)
}

func (b aclBackend) Bootstrapped() bool { return b.n.fsm.ACL().Bootstrapped() }

// proposeACL applies an ACL command for caller and maps its refusals to API errors.
func (b aclBackend) proposeACL(ctx context.Context, caller httpapi.Caller, body fsm.Payload) error {
	res, err := b.n.internode.Propose(ctx, &fsm.Command{Body: body})
	if err == nil {
		err = b.n.internode.WaitIndex(ctx, res.Index) // the caller reads its own write on this node
	}
	switch {
	case errors.Is(err, fsm.ErrACLBootstrapped):
		return api.Errorf(api.CodeACLBootstrapped, "ACLs were bootstrapped already; the bootstrap token is shown only once")
	case errors.Is(err, fsm.ErrACLNotFound):
		return api.Errorf(api.CodeNotFound, "%v", err)
	}
	return toAPIError(err)
}

// bootstrapper proposes the bootstrap token; acl.Bootstrap makes it.
type bootstrapper struct {
	ctx context.Context
	b   aclBackend
}

func (p bootstrapper) ApplyBootstrap(tok acl.Token) error {
	return p.b.proposeACL(p.ctx, httpapi.Caller{}, &fsm.ACLBootstrap{Token: tok})
}

func (b aclBackend) Bootstrap(ctx context.Context) (api.ACLToken, error) {
	tok, secret, err := acl.Bootstrap(bootstrapper{ctx, b}, time.Now())
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			return api.ACLToken{}, ae
		}
		return api.ACLToken{}, err
	}
	return b.withSecret(tok.AccessorID, secret)
}

// withSecret is the stored token (as Apply stamped it) with its secret, for the one reply that
// shows it.
func (b aclBackend) withSecret(accessorID string, secret acl.Secret) (api.ACLToken, error) {
	stored, ok := b.n.fsm.ACL().Token(accessorID)
	if !ok {
		return api.ACLToken{}, fmt.Errorf("token %s applied but not found", accessorID)
	}
	out := toAPIACLToken(stored)
	out.SecretID = secret.Reveal()
	return out, nil
}

func (b aclBackend) SetPolicy(ctx context.Context, caller httpapi.Caller, p api.ACLPolicy) (api.ACLPolicy, error) {
	ap := fromAPIPolicy(p)
	if err := ap.Validate(); err != nil {
		return api.ACLPolicy{}, api.Errorf(api.CodeInvalidPolicy, "%v", err)
	}
	if err := b.proposeACL(ctx, caller, &fsm.ACLPolicySet{Policy: ap}); err != nil {
		return api.ACLPolicy{}, err
	}
	return toAPIPolicy(ap), nil
}

func (b aclBackend) Policies(context.Context) ([]api.ACLPolicy, error) {
	ps := b.n.fsm.ACL().Policies()
	out := make([]api.ACLPolicy, 0, len(ps))
	for _, p := range ps {
		out = append(out, toAPIPolicy(p))
	}
	return out, nil
}

func (b aclBackend) DeletePolicy(ctx context.Context, caller httpapi.Caller, name string) error {
	if _, ok := b.n.fsm.ACL().Policy(name); !ok {
		return api.Errorf(api.CodeNotFound, "policy %q not found", api.Truncate(name))
	}
	return b.proposeACL(ctx, caller, &fsm.ACLPolicyDelete{Name: name})
}

// maxTokenTTL bounds a token's lifetime; longer-lived callers use tokens without a TTL on
// purpose, not by an overflowing duration.
const maxTokenTTL = 10 * 365 * 24 * time.Hour

func (b aclBackend) CreateToken(ctx context.Context, caller httpapi.Caller, req api.ACLTokenRequest) (api.ACLToken, error) {
	if len(req.Policies) == 0 {
		return api.ACLToken{}, api.Errorf(api.CodeInvalidTokenRequest, "a token needs at least one policy")
	}
	for _, p := range req.Policies {
		if _, ok := b.n.fsm.ACL().Policy(p); !ok {
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
	if err := b.proposeACL(ctx, caller, &fsm.ACLTokenCreate{Token: tok, TTL: fsm.Duration(ttl)}); err != nil {
		return api.ACLToken{}, err
	}
	return b.withSecret(tok.AccessorID, secret)
}

func (b aclBackend) Tokens(context.Context) ([]api.ACLToken, error) {
	ts := b.n.fsm.ACL().Tokens()
	out := make([]api.ACLToken, 0, len(ts))
	for _, t := range ts {
		out = append(out, toAPIACLToken(t))
	}
	return out, nil
}

func (b aclBackend) DeleteToken(ctx context.Context, caller httpapi.Caller, accessorID string) error {
	if _, ok := b.n.fsm.ACL().Token(accessorID); !ok {
		return api.Errorf(api.CodeNotFound, "token %q not found", api.Truncate(accessorID))
	}
	return b.proposeACL(ctx, caller, &fsm.ACLTokenDelete{AccessorID: accessorID})
}

func (b aclBackend) Token(_ context.Context, accessorID string) (api.ACLToken, bool) {
	t, ok := b.n.fsm.ACL().Token(accessorID)
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
