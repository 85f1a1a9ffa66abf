package acl

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// ErrUnauthenticated: no credential where one is needed, or one that is unknown, expired or
// malformed. The HTTP layer answers 401. Errors that wrap it never contain the credential.
var ErrUnauthenticated = errors.New("acl: unauthenticated")

// ErrPermissionDenied matches every *Denied with errors.Is. The HTTP layer answers 403.
var ErrPermissionDenied = errors.New("acl: permission denied")

// MaxCredentialLen bounds what Resolve looks at; a longer header is malformed, not hashed.
const MaxCredentialLen = 8 << 10

// Kind says how an identity was established.
type Kind string

// The kinds of identity.
const (
	KindToken     Kind = "token"     // an ACL token's secret
	KindJWT       Kind = "jwt"       // a JWT accepted by the JWT auth method
	KindAnonymous Kind = "anonymous" // no credential, and an anonymous policy exists
)

// Authorizer turns credentials into identities. It holds no state of its own: every Resolve reads
// the Store, so a policy or token change replicated to this node applies to the next request.
type Authorizer struct {
	store Store
	jwt   *JWTMethod
}

// NewAuthorizer returns an Authorizer over store. jwt may be nil, and then JWTs are refused.
func NewAuthorizer(store Store, jwt *JWTMethod) *Authorizer {
	return &Authorizer{store: store, jwt: jwt}
}

// Resolve establishes who sent credential: a token secret, a JWT (three dot-separated parts; a
// secret never contains '.'), or "" for no credential at all. Unknown, expired and malformed
// credentials, and "" when there is no anonymous policy, give an error wrapping
// ErrUnauthenticated. The policies are read now, so later checks on the identity see one
// consistent set of rules.
func (a *Authorizer) Resolve(credential string, now time.Time) (*Identity, error) {
	switch {
	case credential == "":
		p, ok := a.store.Policy(AnonymousPolicy)
		if !ok {
			return nil, fmt.Errorf("%w: no token", ErrUnauthenticated)
		}
		id := &Identity{Principal: AnonymousPolicy, Kind: KindAnonymous, Policies: []string{AnonymousPolicy}}
		id.add(p)
		return id, nil
	case len(credential) > MaxCredentialLen:
		return nil, fmt.Errorf("%w: credential longer than %d bytes", ErrUnauthenticated, MaxCredentialLen)
	case strings.Count(credential, ".") == 2:
		if a.jwt == nil {
			return nil, fmt.Errorf("%w: JWTs are not accepted (no JWT auth method)", ErrUnauthenticated)
		}
		subject, policies, err := a.jwt.verify(credential, now)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
		}
		return a.identity(subject, KindJWT, policies, false), nil
	}
	hash := HashSecret(credential)
	tok, ok := a.store.TokenBySecretHash(hash)
	// The lookup is by hash, which an attacker cannot steer toward a stored one; the constant-time
	// compare guards a Store whose index is looser than an exact map.
	if !ok || subtle.ConstantTimeCompare([]byte(tok.SecretHash), []byte(hash)) != 1 {
		return nil, fmt.Errorf("%w: unknown token", ErrUnauthenticated)
	}
	if tok.Expired(now) {
		return nil, fmt.Errorf("%w: token expired", ErrUnauthenticated)
	}
	return a.identity(tok.AccessorID, KindToken, tok.Policies, tok.Management), nil
}

func (a *Authorizer) identity(principal string, kind Kind, policies []string, management bool) *Identity {
	id := &Identity{Principal: principal, Kind: kind, Policies: slices.Clone(policies), Management: management}
	for _, name := range policies {
		// A token may name a policy deleted since: it grants nothing until applied again.
		if p, ok := a.store.Policy(name); ok {
			id.add(p)
		}
	}
	return id
}

// Identity is an authenticated caller and what its policies allow.
type Identity struct {
	// Principal is what a task records as its submitter: the token's accessor ID, the JWT's
	// subject, or "anonymous".
	Principal  string
	Kind       Kind
	Policies   []string // as named by the token or the JWT mapping; deleted ones grant nothing
	Management bool     // may do everything

	rules  []compiledRule
	rights uint8
}

type compiledRule struct {
	pattern string
	policy  string
	allow   uint8 // capBits
	deny    bool
}

func (id *Identity) add(p Policy) {
	for _, r := range p.Rules {
		cr := compiledRule{pattern: r.TaskType, policy: p.Name}
		for _, c := range r.Capabilities {
			if c == CapDeny {
				cr.deny = true
			}
			cr.allow |= capBits[c]
		}
		id.rules = append(id.rules, cr)
	}
	for _, r := range p.Cluster {
		id.rights |= rightBits[r]
	}
}

// LogValue logs who, never how: no secret, no JWT.
func (id *Identity) LogValue() slog.Value {
	if id == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(slog.String("principal", id.Principal), slog.String("kind", string(id.Kind)))
}

// Allow returns nil when the identity may use capability on tasks of taskType, else a *Denied.
// Every rule of every policy whose pattern matches counts: the capabilities they grant add up,
// and one matching deny rule refuses everything, however specific an allowing rule is. A nil
// identity and an unknown capability are refused.
func (id *Identity) Allow(capability Capability, taskType string) error {
	if id == nil {
		return &Denied{Capability: capability, TaskType: taskType}
	}
	if id.Management {
		return nil
	}
	bit := capBits[capability]
	var granted uint8
	for _, r := range id.rules {
		if !MatchPattern(r.pattern, taskType) {
			continue
		}
		if r.deny {
			return &Denied{Principal: id.Principal, Capability: capability, TaskType: taskType, DeniedBy: r.policy}
		}
		granted |= r.allow
	}
	if bit == 0 || granted&bit == 0 {
		return &Denied{Principal: id.Principal, Capability: capability, TaskType: taskType}
	}
	return nil
}

// CanRead reports whether Allow(CapRead, taskType) passes.
func (id *Identity) CanRead(taskType string) bool { return id.Allow(CapRead, taskType) == nil }

// Cluster returns nil when the identity holds right, else a *Denied.
func (id *Identity) Cluster(right ClusterRight) error {
	if id == nil {
		return &Denied{Right: right}
	}
	if id.Management {
		return nil
	}
	bit := rightBits[right]
	if right == RightMetrics {
		bit |= rightBits[RightOperator] // whoever runs the cluster may watch it
	}
	if bit == 0 || id.rights&bit == 0 {
		return &Denied{Principal: id.Principal, Right: right}
	}
	return nil
}

// ReadsAll reports whether the identity may read tasks of every type, any type made later
// included: a management identity, or one with a read rule on "*" and no deny rule. Counts that
// span types (a queue's) are shown only to such an identity.
func (id *Identity) ReadsAll() bool {
	if id == nil {
		return false
	}
	if id.Management {
		return true
	}
	all := false
	for _, r := range id.rules {
		if r.deny {
			return false
		}
		if r.pattern == "*" && r.allow&capBits[CapRead] != 0 {
			all = true
		}
	}
	return all
}

// Denied is a refusal of a known identity (HTTP 403). Its message names what was missing.
type Denied struct {
	Principal  string
	Capability Capability   // set for task checks
	TaskType   string       // set for task checks
	Right      ClusterRight // set for cluster checks
	DeniedBy   string       // the policy whose deny rule matched, if one did
}

func (d *Denied) Error() string {
	if d.Right != "" {
		return fmt.Sprintf("permission denied: missing cluster right %q", d.Right)
	}
	if d.DeniedBy != "" {
		return fmt.Sprintf("permission denied: %q on task type %q is denied by policy %q", short(string(d.Capability)), short(d.TaskType), d.DeniedBy)
	}
	return fmt.Sprintf("permission denied: missing capability %q on task type %q", short(string(d.Capability)), short(d.TaskType))
}

// Is makes errors.Is(err, ErrPermissionDenied) true for every *Denied.
func (d *Denied) Is(target error) bool { return target == ErrPermissionDenied }

// FilterReadable keeps the items whose task type the identity may read, in order, for lists:
// a caller sees only tasks of types it may read, and nothing says that others exist. It returns
// a new slice and leaves items alone.
func FilterReadable[T any](id *Identity, items []T, taskType func(T) string) []T {
	out := make([]T, 0, len(items))
	for _, it := range items {
		if id.CanRead(taskType(it)) {
			out = append(out, it)
		}
	}
	return out
}
