package fsm

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/taskworker/taskworker/internal/acl"
)

// ACL command types: the cluster's policies, tokens and bootstrap flag live in the replicated
// state so any node can authorize a request from its own copy. No command carries a token's
// secret: the node that makes a token hashes its secret before proposing and shows the secret
// once, to the caller, so the secret never reaches the log, a snapshot or another node.
const (
	CmdACLBootstrap    CommandType = 11 // the first management token, once per cluster
	CmdACLPolicySet    CommandType = 12 // create or replace a policy
	CmdACLPolicyDelete CommandType = 13
	CmdACLTokenCreate  CommandType = 14
	CmdACLTokenDelete  CommandType = 15
)

func init() {
	register(Spec[ACLBootstrap]{Type: CmdACLBootstrap, Name: "acl_bootstrap", Since: 1, Apply: (*FSM).applyACLBootstrap})
	register(Spec[ACLPolicySet]{Type: CmdACLPolicySet, Name: "acl_policy_set", Since: 1, Apply: (*FSM).applyACLPolicySet})
	register(Spec[ACLPolicyDelete]{Type: CmdACLPolicyDelete, Name: "acl_policy_delete", Since: 1, Apply: (*FSM).applyACLPolicyDelete})
	register(Spec[ACLTokenCreate]{Type: CmdACLTokenCreate, Name: "acl_token_create", Since: 1, Apply: (*FSM).applyACLTokenCreate})
	register(Spec[ACLTokenDelete]{Type: CmdACLTokenDelete, Name: "acl_token_delete", Since: 1, Apply: (*FSM).applyACLTokenDelete})

	registerTable(Table[acl.State]{
		Name: "acl",
		Pos:  30,
		// Absent from snapshots of clusters that never used ACLs (and of builds before them).
		Capture: func(f *FSM) (acl.State, bool) {
			st := f.acl.State()
			return st, st.Bootstrapped || len(st.Policies) > 0 || len(st.Tokens) > 0
		},
		// A state that does not validate is refused before the restore changes anything.
		Check: func(st *acl.State) error { return acl.NewMemStore().Restore(*st) },
		Install: func(f *FSM, st *acl.State) {
			var s acl.State
			if st != nil {
				s = *st
			}
			_ = f.acl.Restore(s) // Check passed on this very state (and the empty one is valid)
		},
		Digest: func(f *FSM, put func(any)) {
			put("acl")
			put(f.acl.State()) // policies by name, tokens by accessor ID, the bootstrap flag
		},
	})
}

// ACLBootstrap records the first management token; a cluster bootstrapped before refuses it
// (ErrACLBootstrapped), even when that token was deleted since.
type ACLBootstrap struct {
	Token acl.Token `msgpack:"token"`
}

// ACLPolicySet creates or replaces a policy by name.
type ACLPolicySet struct {
	Policy acl.Policy `msgpack:"policy"`
}

// NeedsProtocol implements NeedsProtocol: a policy with a quota needs AdmissionProtocol, and so
// does one granting the metrics right, which older replicas refuse to store (they would part
// from the others).
func (p *ACLPolicySet) NeedsProtocol() int {
	if p.Policy.Quota != nil || slices.Contains(p.Policy.Cluster, acl.RightMetrics) {
		return AdmissionProtocol
	}
	return 0
}

// ACLPolicyDelete removes a policy; tokens naming it keep the name and get nothing from it.
type ACLPolicyDelete struct {
	Name string `msgpack:"name"`
}

// ACLTokenCreate stores a token (its secret's hash only). TTL, when set, makes the token expire
// TTL after the command's Now: the expiry is decided by the leader's clock, once, never by a
// replica's. Apply also stamps CreateTime with Now.
type ACLTokenCreate struct {
	Token acl.Token `msgpack:"token"`
	TTL   Duration  `msgpack:"ttl,omitempty"`
}

// ACLTokenDelete removes a token by accessor ID; its secret stops working on every node as soon
// as the node applies the command.
type ACLTokenDelete struct {
	AccessorID string `msgpack:"accessor_id"`
}

// Errors of the ACL commands; their codes cross the wire on a forward like the others.
var (
	ErrACLBootstrapped = newError("acl_bootstrapped", "ACLs already bootstrapped")
	ErrACLNotFound     = newError("acl_not_found", "ACL policy or token not found")
	ErrACLExists       = newError("acl_exists", "ACL token already exists")
	ErrACLInvalid      = newError("acl_invalid", "invalid ACL policy or token")
)

// aclErr gives an acl package error the fsm sentinel that crosses the wire.
func aclErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, acl.ErrAlreadyBootstrapped):
		return fmt.Errorf("%w: %v", ErrACLBootstrapped, err)
	case errors.Is(err, acl.ErrNotFound):
		return fmt.Errorf("%w: %v", ErrACLNotFound, err)
	case errors.Is(err, acl.ErrExists):
		return fmt.Errorf("%w: %v", ErrACLExists, err)
	}
	return fmt.Errorf("%w: %v", ErrACLInvalid, err)
}

func (f *FSM) applyACLBootstrap(_ uint64, now time.Time, p *ACLBootstrap) ([]ItemResult, error) {
	tok := p.Token
	tok.CreateTime = now
	return nil, aclErr(f.acl.ApplyBootstrap(tok))
}

func (f *FSM) applyACLPolicySet(_ uint64, _ time.Time, p *ACLPolicySet) ([]ItemResult, error) {
	return nil, aclErr(f.acl.SetPolicy(p.Policy))
}

func (f *FSM) applyACLPolicyDelete(_ uint64, _ time.Time, p *ACLPolicyDelete) ([]ItemResult, error) {
	return nil, aclErr(f.acl.DeletePolicy(p.Name))
}

func (f *FSM) applyACLTokenCreate(_ uint64, now time.Time, p *ACLTokenCreate) ([]ItemResult, error) {
	tok := p.Token
	if tok.Management {
		// Only bootstrap makes management tokens; anyone who may manage ACLs can still write a
		// policy granting everything, but that grant is visible in the policy list.
		return nil, fmt.Errorf("%w: token create cannot make a management token", ErrACLInvalid)
	}
	if p.TTL < 0 {
		return nil, fmt.Errorf("%w: negative ttl", ErrACLInvalid)
	}
	tok.CreateTime = now
	tok.ExpirationTime = time.Time{}
	if p.TTL > 0 {
		tok.ExpirationTime = now.Add(time.Duration(p.TTL))
	}
	return nil, aclErr(f.acl.CreateToken(tok))
}

func (f *FSM) applyACLTokenDelete(_ uint64, _ time.Time, p *ACLTokenDelete) ([]ItemResult, error) {
	return nil, aclErr(f.acl.DeleteToken(p.AccessorID))
}

// ACL returns a read-only view of the replicated ACL state, for the node's authorizer: it is
// safe to use while raft applies.
func (f *FSM) ACL() ACLView { return ACLView{f.acl} }

// ACLView reads the replicated ACL state. It implements acl.Store.
type ACLView struct{ s *acl.MemStore }

var _ acl.Store = ACLView{}

// Policy implements acl.Store.
func (v ACLView) Policy(name string) (acl.Policy, bool) { return v.s.Policy(name) }

// TokenBySecretHash implements acl.Store.
func (v ACLView) TokenBySecretHash(hash string) (acl.Token, bool) { return v.s.TokenBySecretHash(hash) }

// Token returns a token by accessor ID.
func (v ACLView) Token(accessorID string) (acl.Token, bool) { return v.s.TokenByAccessor(accessorID) }

// Policies returns every policy, by name.
func (v ACLView) Policies() []acl.Policy { return v.s.Policies() }

// Tokens returns every token (secret hashes included: callers strip them), by accessor ID.
func (v ACLView) Tokens() []acl.Token { return v.s.Tokens() }

// Bootstrapped reports whether the cluster's first management token was made.
func (v ACLView) Bootstrapped() bool { return v.s.Bootstrapped() }
