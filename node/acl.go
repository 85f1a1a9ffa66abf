package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// ACLs (Config.ACL): the state lives in the FSM (fsm/acl.go), so every node resolves credentials
// from its own replica; writes go to the leader like any command. A follower hands the caller's
// credential to the leader beside the command (callerCredentialHeader), and the leader resolves
// and authorizes it again before applying (authorizeForward): a follower cannot be used to do
// what the caller may not.

// aclBackend is the node as httpapi's ACL sees it.
type aclBackend struct{ n *Node }

var _ httpapi.ACL = aclBackend{}

// authorizer resolves credentials against this node's replica of the ACL state.
func (n *Node) authorizer() *acl.Authorizer { return acl.NewAuthorizer(n.fsm.ACL(), n.cfg.JWT) }

func (b aclBackend) Resolve(credential string, now time.Time) (*acl.Identity, error) {
	return b.n.authorizer().Resolve(credential, now)
}

func (b aclBackend) Bootstrapped() bool { return b.n.fsm.ACL().Bootstrapped() }

// credentialKey carries a caller's credential from the API handler to forward, which sends it to
// the leader. Only the node package reads it.
type credentialKey struct{}

func withCaller(ctx context.Context, c httpapi.Caller) context.Context {
	if c.Identity == nil {
		return ctx
	}
	return context.WithValue(ctx, credentialKey{}, c.Credential)
}

func callerCredential(ctx context.Context) acl.Secret {
	s, _ := ctx.Value(credentialKey{}).(acl.Secret)
	return s
}

// proposeACL applies an ACL command for caller and maps its refusals to API errors.
func (b aclBackend) proposeACL(ctx context.Context, caller httpapi.Caller, body fsm.Payload) error {
	res, err := b.n.propose(withCaller(ctx, caller), &fsm.Command{Body: body})
	if err == nil {
		err = b.n.waitIndex(ctx, res.Index) // the caller reads its own write on this node
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

// authorizeForward is the leader's check of a forwarded command with ACLs on: the credential the
// follower sent beside it is resolved and authorized again, as if the caller had come here, and
// a submit records the principal the leader resolved, whatever the follower wrote. Commands that
// nodes send on their own (reports, registration, drain) carry no caller and need none. The
// error is an *api.Error (401 or 403).
func (n *Node) authorizeForward(c *fsm.Command, credential string) error {
	if !n.cfg.ACL {
		return nil
	}
	resolve := func() (*acl.Identity, error) {
		id, err := n.authorizer().Resolve(credential, time.Now())
		if err != nil {
			return nil, api.Errorf(api.CodeUnauthorized, "forwarded request: %v", err)
		}
		return id, nil
	}
	deny := func(err error) error {
		if err == nil {
			return nil
		}
		return api.Errorf(api.CodeForbidden, "%v", err)
	}
	switch body := c.Body.(type) {
	case *fsm.SubmitBatch:
		if credential == "" && n.childSubmits(body) {
			return nil
		}
		id, err := resolve()
		if err != nil {
			return err
		}
		for i := range body.Items {
			if err := id.Allow(acl.CapSubmit, body.Items[i].Type); err != nil {
				return deny(err)
			}
			body.Items[i].SubmittedBy = id.Principal
		}
	case *fsm.Cancel:
		id, err := resolve()
		if err != nil {
			return err
		}
		for _, tid := range body.IDs {
			if t, ok := n.fsm.Task(tid); ok {
				if err := id.Allow(acl.CapCancel, t.Type); err != nil {
					return deny(err)
				}
			}
		}
	case *fsm.SchedulePut, *fsm.ScheduleDelete, *fsm.ScheduleFire:
		// A schedule submits tasks of its type for whoever put it: every change needs the
		// submit capability on the type (old and new).
		id, err := resolve()
		if err != nil {
			return err
		}
		types, _ := n.scheduleTypes(c)
		for _, typ := range types {
			if err := id.Allow(acl.CapSubmit, typ); err != nil {
				return deny(err)
			}
		}
		if put, ok := body.(*fsm.SchedulePut); ok {
			put.Schedule.SubmittedBy = id.Principal
		}
	case *fsm.Retry:
		id, err := resolve()
		if err != nil {
			return err
		}
		for _, tid := range body.IDs {
			if t, ok := n.fsm.Task(tid); ok {
				if err := id.Allow(acl.CapSubmit, t.Type); err != nil {
					return deny(err)
				}
			}
		}
		body.By = id.Principal
	case *fsm.Purge:
		id, err := resolve()
		if err != nil {
			return err
		}
		return deny(purgeAllowed(id, body.Type))
	case *fsm.ACLPolicySet, *fsm.ACLPolicyDelete, *fsm.ACLTokenCreate, *fsm.ACLTokenDelete:
		id, err := resolve()
		if err != nil {
			return err
		}
		return deny(id.Cluster(acl.RightACL))
	case *fsm.QueueSet, *fsm.TypeLimitSet: // queue.go: changing limits is the operator's
		id, err := resolve()
		if err != nil {
			return err
		}
		return deny(id.Cluster(acl.RightOperator))
	}
	// ACLBootstrap needs no caller: the FSM accepts it once per cluster.
	return nil
}

// childSubmits reports whether every item is a child task submitted by a running task on behalf
// of its parent's submitter: the executor submits those without a caller's credential.
func (n *Node) childSubmits(b *fsm.SubmitBatch) bool {
	return len(b.Items) > 0 && !slices.ContainsFunc(b.Items, func(s fsm.Submit) bool {
		parent, ok := n.fsm.Task(s.ParentID)
		return s.ParentID == "" || !ok || !parent.State.Active() || parent.SubmittedBy != s.SubmittedBy
	})
}

// forwardRefusal turns the leader's refusal of a forward (a 4xx with the API's error body: 401, 403,
// or a submit that failed the leader's own validation) into the API error it was.
func forwardRefusal(status int, body []byte) error {
	if status < 400 || status >= 500 || status == http.StatusNotFound {
		return nil
	}
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || e.Code == "" {
		e = api.Error{Code: api.CodeForbidden, Message: "the leader refused the forwarded request"}
	}
	// The prefix tells a refusal of the caller apart from one of this node (a --token mismatch
	// between nodes answers with the same codes).
	return api.Errorf(e.Code, "the leader refused the forwarded request: %s", e.Message)
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
