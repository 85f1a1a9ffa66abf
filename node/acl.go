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
// credential to the leader beside the command (callerCredentialHeader), with or without ACLs, and
// the leader authorizes it again before applying (authorizeForward, by a rule for each command
// type): a follower cannot be used to do what the caller may not, nor what its own replica, behind
// the leader's, still allows.

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

// credentialKey carries a caller's credential from the API handler to forward, which sends it to
// the leader. Only the node package reads it.
type credentialKey struct{}

func withCaller(ctx context.Context, c httpapi.Caller) context.Context {
	if c.Credential == "" {
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

// forwardCaller is who a forwarded command is for: the API caller's credential, which the
// follower sent beside the command ("" for none), and the node whose certificate made the call.
type forwardCaller struct {
	credential string
	node       internodeCaller
}

// forwardRule is the leader's check of one forwarded command type: nil to apply it, else an
// *api.Error (401 or 403). A rule may also overwrite what the leader must decide, not the
// follower: the principal a submit or schedule records.
type forwardRule func(n *Node, c *fsm.Command, from forwardCaller) error

// forwardRules has a rule for every forwardable command type (TestEveryForwardableCommandHasARule
// walks the command table); a type without one is refused.
var forwardRules = map[fsm.CommandType]forwardRule{
	// Users' requests: what the caller's capabilities allow on the task types concerned.
	fsm.CmdSubmit:         authorizeSubmit,
	fsm.CmdCancel:         authorizeTasks(acl.CapCancel),
	fsm.CmdRetry:          authorizeRetry,
	fsm.CmdPurge:          authorizePurge,
	fsm.CmdSchedulePut:    authorizeSchedule,
	fsm.CmdScheduleDelete: authorizeSchedule,
	fsm.CmdScheduleFire:   authorizeSchedule,
	// Cluster settings: a cluster right.
	fsm.CmdQueueSet:        clusterRight(acl.RightOperator),
	fsm.CmdTypeLimitSet:    clusterRight(acl.RightOperator),
	fsm.CmdACLPolicySet:    aclWrite,
	fsm.CmdACLPolicyDelete: aclWrite,
	fsm.CmdACLTokenCreate:  aclWrite,
	fsm.CmdACLTokenDelete:  aclWrite,
	// The FSM accepts the bootstrap token once per cluster, from anyone: that is what bootstrap is.
	fsm.CmdACLBootstrap: func(*Node, *fsm.Command, forwardCaller) error { return nil },
	// What admits a machine to the cluster: the management credential's, or the operator right's.
	fsm.CmdJoinSecret: managementOnly,
	fsm.CmdKeyring:    managementOnly,
	fsm.CmdManagement: managementOnly,
	// What a node says of itself: only that node's certificate (checkNodeIdentity).
	fsm.CmdReport:   nodeOnly,
	fsm.CmdRegister: nodeOnly,
	fsm.CmdDrain:    nodeOnly,
}

// authorizeForward is the leader's check of a forwarded command, as if its caller had come here:
// the command type's rule, and a refusal for a type that has none. The error is an *api.Error.
func (n *Node) authorizeForward(c *fsm.Command, from forwardCaller) error {
	rule := forwardRules[c.Type()]
	if rule == nil {
		return api.Errorf(api.CodeForbidden, "the leader has no rule for a forwarded %s command", c.Type())
	}
	return rule(n, c, from)
}

// forwardIdentity resolves a forwarded caller's credential at the leader (401 when it is missing,
// unknown, revoked or expired).
func (n *Node) forwardIdentity(credential string) (*acl.Identity, error) {
	id, err := n.resolve(credential, time.Now())
	if err != nil {
		return nil, api.Errorf(api.CodeUnauthorized, "forwarded request: %v", err)
	}
	return id, nil
}

func forwardDenied(err error) error {
	if err == nil {
		return nil
	}
	return api.Errorf(api.CodeForbidden, "%v", err)
}

// userRequest resolves the caller of a user's request with ACLs on: check reports whether the
// rule goes on to check id's capabilities. It is false without ACLs (the follower's API let the
// request in, and the leader has nothing more to know) and when err refuses the caller.
func (n *Node) userRequest(from forwardCaller) (id *acl.Identity, check bool, err error) {
	if !n.cfg.ACL {
		return nil, false, nil
	}
	id, err = n.forwardIdentity(from.credential)
	return id, err == nil, err
}

func authorizeSubmit(n *Node, c *fsm.Command, from forwardCaller) error {
	body := c.Body.(*fsm.SubmitBatch)
	if from.credential == "" && n.childSubmits(body) {
		return nil
	}
	id, ok, err := n.userRequest(from)
	if !ok {
		return err
	}
	for i := range body.Items {
		if err := id.Allow(acl.CapSubmit, body.Items[i].Type); err != nil {
			return forwardDenied(err)
		}
		body.Items[i].SubmittedBy = id.Principal
	}
	return nil
}

// authorizeTasks checks a capability on the type of every task a Cancel names.
func authorizeTasks(capability acl.Capability) forwardRule {
	return func(n *Node, c *fsm.Command, from forwardCaller) error {
		id, ok, err := n.userRequest(from)
		if !ok {
			return err
		}
		return forwardDenied(n.allowOnTasks(id, capability, c.Body.(*fsm.Cancel).IDs))
	}
}

func (n *Node) allowOnTasks(id *acl.Identity, capability acl.Capability, ids []string) error {
	for _, tid := range ids {
		if t, ok := n.fsm.Task(tid); ok {
			if err := id.Allow(capability, t.Type); err != nil {
				return err
			}
		}
	}
	return nil
}

func authorizeRetry(n *Node, c *fsm.Command, from forwardCaller) error {
	id, ok, err := n.userRequest(from)
	if !ok {
		return err
	}
	body := c.Body.(*fsm.Retry)
	if err := n.allowOnTasks(id, acl.CapSubmit, body.IDs); err != nil {
		return forwardDenied(err)
	}
	body.By = id.Principal
	return nil
}

func authorizePurge(n *Node, c *fsm.Command, from forwardCaller) error {
	id, ok, err := n.userRequest(from)
	if !ok {
		return err
	}
	return forwardDenied(purgeAllowed(id, c.Body.(*fsm.Purge).Type))
}

// authorizeSchedule: a schedule submits tasks of its type for whoever put it, so every change
// needs the submit capability on the type (old and new).
func authorizeSchedule(n *Node, c *fsm.Command, from forwardCaller) error {
	id, ok, err := n.userRequest(from)
	if !ok {
		return err
	}
	types, _ := n.scheduleTypes(c)
	for _, typ := range types {
		if err := id.Allow(acl.CapSubmit, typ); err != nil {
			return forwardDenied(err)
		}
	}
	if put, ok := c.Body.(*fsm.SchedulePut); ok {
		put.Schedule.SubmittedBy = id.Principal
	}
	return nil
}

// clusterRight needs a cluster right with ACLs on; without ACLs the follower's API let the
// request in (these settings are open there, as task routes are).
func clusterRight(right acl.ClusterRight) forwardRule {
	return func(n *Node, _ *fsm.Command, from forwardCaller) error {
		id, ok, err := n.userRequest(from)
		if !ok {
			return err
		}
		return forwardDenied(id.Cluster(right))
	}
}

// aclWrite changes the ACL state: the acl right, and never without ACLs (no route proposes it).
func aclWrite(n *Node, c *fsm.Command, from forwardCaller) error {
	if !n.cfg.ACL {
		return api.Errorf(api.CodeForbidden, "ACLs are not enabled on this cluster: the leader refuses a forwarded %s", c.Type())
	}
	return clusterRight(acl.RightACL)(n, c, from)
}

// managementOnly: the join secret, the gossip keys and the management credential decide who may
// join the cluster. The caller must hold the management credential, or with ACLs the operator
// right, in every mode: without ACLs no other caller reaches the routes that propose them.
func managementOnly(n *Node, c *fsm.Command, from forwardCaller) error {
	switch {
	case from.credential == "":
		return api.Errorf(api.CodeUnauthorized, "forwarded %s: the caller sent no credential; it needs the management credential", c.Type())
	case n.trust.IsManagement(from.credential):
		return nil
	case !n.cfg.ACL:
		return api.Errorf(api.CodeForbidden, "forwarded %s: the caller's credential is not the management credential", c.Type())
	}
	id, err := n.forwardIdentity(from.credential)
	if err != nil {
		return err
	}
	return forwardDenied(id.Cluster(acl.RightOperator))
}

// nodeOnly: a command a node sends about itself, which no API caller sends; only a certificate
// naming that node may (checkNodeIdentity).
func nodeOnly(_ *Node, c *fsm.Command, from forwardCaller) error {
	if err := checkNodeIdentity(c, from.node); err != nil {
		return api.Errorf(api.CodeForbidden, "%v", err)
	}
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
