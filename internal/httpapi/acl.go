package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/acl"
)

// ACL is what the API needs for access control, when it is on (Options.ACL): resolving a
// request's credential against the replicated ACL state, and managing that state. The node
// implements it; writes go through the leader, which authorizes the forwarded caller again.
type ACL interface {
	// Resolve returns the identity presenting credential at now ("" is a request without one).
	// Its error is acl.ErrUnauthenticated for a missing, unknown or expired credential.
	Resolve(credential string, now time.Time) (*acl.Identity, error)
	// Bootstrapped reports whether the cluster's first management token was made.
	Bootstrapped() bool

	// Bootstrap makes the first management token and returns it with its secret
	// (acl_bootstrapped when done before).
	Bootstrap(ctx context.Context) (api.ACLToken, error)
	// SetPolicy creates or replaces a policy (invalid_policy when it does not validate).
	SetPolicy(ctx context.Context, caller Caller, p api.ACLPolicy) (api.ACLPolicy, error)
	// Policies lists every policy by name.
	Policies(ctx context.Context) ([]api.ACLPolicy, error)
	// DeletePolicy removes a policy (not_found when unknown).
	DeletePolicy(ctx context.Context, caller Caller, name string) error
	// CreateToken makes a token and returns it with its secret, shown this once.
	CreateToken(ctx context.Context, caller Caller, req api.ACLTokenRequest) (api.ACLToken, error)
	// Tokens lists every token, without secrets.
	Tokens(ctx context.Context) ([]api.ACLToken, error)
	// DeleteToken removes a token by accessor ID (not_found when unknown).
	DeleteToken(ctx context.Context, caller Caller, accessorID string) error
	// Token returns a token by accessor ID, without its secret.
	Token(ctx context.Context, accessorID string) (api.ACLToken, bool)
}

// Caller is who made a request. With ACLs off it is the zero Caller, which may do everything
// the route allows. Backend methods that write get it so that a follower can hand the caller's
// credential to the leader, which resolves and authorizes it again before applying.
type Caller struct {
	// Credential is the bearer token or JWT the request carried, "" for none. It is an
	// acl.Secret so that it prints as "[redacted]" wherever it ends up by mistake.
	Credential acl.Secret
	// Identity is what Credential resolved to; nil with ACLs off.
	Identity *acl.Identity
}

// Principal is who the caller is for the task record's submitted_by: "" with ACLs off.
func (c Caller) Principal() string {
	if c.Identity == nil {
		return ""
	}
	return c.Identity.Principal
}

// Allow checks a task capability on a type; everything is allowed with ACLs off.
func (c Caller) Allow(capability acl.Capability, taskType string) error {
	if c.Identity == nil {
		return nil
	}
	return c.Identity.Allow(capability, taskType)
}

// CanRead reports whether the caller may see tasks of a type.
func (c Caller) CanRead(taskType string) bool { return c.Allow(acl.CapRead, taskType) == nil }

type callerKey struct{}

// callerOf returns the request's caller as the ACL middleware resolved it.
func callerOf(r *http.Request) Caller {
	c, _ := r.Context().Value(callerKey{}).(Caller)
	return c
}

// credential reads the caller's credential: "Authorization: Bearer X" or "X-Taskworker-Token: X".
func credential(r *http.Request) string {
	if v, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(v)
	}
	return strings.TrimSpace(r.Header.Get("X-Taskworker-Token"))
}

// clusterRight is the cluster right a path needs beyond a working credential, "" for none.
// Routes are matched by prefix so that a route added later under /v1/operator/ or /v1/acl/ is
// guarded without anyone remembering to guard it.
func clusterRight(path string) acl.ClusterRight {
	switch {
	case path == "/v1/agent/leave", operatorRoute(path):
		return acl.RightOperator
	case path == api.PathACLTokenSelf:
		return ""
	case path == "/metrics": // per-type counts
		return acl.RightMetrics
	case strings.HasPrefix(path, "/v1/acl/"):
		return acl.RightACL
	}
	return ""
}

// operatorRoute reports whether path reads or changes what admits a machine to the cluster (the
// join token, the gossip keys) or shows the node's internals (digest, profiler). Matched by prefix,
// so that a route added later under them is guarded too.
func operatorRoute(path string) bool {
	return strings.HasPrefix(path, "/v1/operator/") || strings.HasPrefix(path, "/debug/pprof/")
}

// requireManagement guards the operator routes of a secure cluster without ACLs: a caller must
// hold the management credential (401 without a credential, 403 with another one, the shared
// --token included), and operator then serves it without the shared token's guard. Other routes
// go to next. The caller's credential rides in its Caller, so that a follower hands it to the
// leader, which checks it again before applying a write.
func (s *server) requireManagement(next, operator http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !operatorRoute(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		cred := credential(r)
		switch {
		case cred == "":
			WriteError(w, api.Errorf(api.CodeUnauthorized, "this route needs the cluster's management credential "+
				"(<data-dir>/management-token on a node; the taskworker CLI on that node finds it by itself)"))
		case !s.opts.Management(cred):
			WriteError(w, api.Errorf(api.CodeForbidden, "this route needs the cluster's management credential, not this one"))
		default:
			ctx := context.WithValue(r.Context(), callerKey{}, Caller{Credential: acl.Secret(cred)})
			operator.ServeHTTP(w, r.WithContext(ctx))
		}
	})
}

// requireACL resolves every request's credential before any handler runs: 401 when it is
// missing (and no anonymous policy exists), unknown or expired; 403 when the route needs a
// cluster right the identity lacks. Task capabilities depend on the task's type, so the
// handlers check them (Caller.Allow) before they change or show anything. Health stays open, as
// does bootstrap until the cluster is bootstrapped; metrics needs the metrics (or operator) right.
func (s *server) requireACL(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		if path == "/v1/health" || isConsole(path) || path == api.PathACLBootstrap && !s.acl.Bootstrapped() {
			next.ServeHTTP(w, r)
			return
		}
		cred := credential(r)
		if path == api.PathACLBootstrap && cred == "" {
			// A second bootstrap without a token: the fact worth telling is that it was done, not
			// that a token is missing. Nothing is proposed for a caller nobody knows.
			WriteError(w, errBootstrappedAlready)
			return
		}
		id, err := s.acl.Resolve(cred, time.Now())
		if err != nil {
			WriteError(w, aclError(err))
			return
		}
		right := clusterRight(path)
		if right == "" {
			right = queueRight(r.Method, path)
		}
		if right == "" {
			right = rateLimitRight(r.Method, path)
		}
		if right != "" {
			if err := id.Cluster(right); err != nil {
				WriteError(w, aclError(err))
				return
			}
		}
		ctx := context.WithValue(r.Context(), callerKey{}, Caller{Credential: acl.Secret(cred), Identity: id})
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// errBootstrappedAlready answers a bootstrap once the cluster has its first management token.
var errBootstrappedAlready = api.Errorf(api.CodeACLBootstrapped,
	"ACLs were bootstrapped already; the bootstrap token is shown only once (a management token makes more: taskworker acl token create)")

// aclError maps the acl package's refusals to the API's codes: 401 for who the caller is not,
// 403 (naming the missing capability or right) for what it may not do.
func aclError(err error) error {
	switch {
	case errors.Is(err, acl.ErrPermissionDenied):
		return api.Errorf(api.CodeForbidden, "%v", err)
	case errors.Is(err, acl.ErrUnauthenticated):
		return api.Errorf(api.CodeUnauthorized, "%s", strings.TrimPrefix(err.Error(), "acl: "))
	}
	return err
}

// authorize checks a task capability for the request's caller; the error is a 403 *api.Error.
func authorize(r *http.Request, capability acl.Capability, taskType string) error {
	return aclError(callerOf(r).Allow(capability, taskType))
}

func (s *server) aclRoutes(mux *routeMux) {
	for pattern, h := range map[string]http.HandlerFunc{
		"POST " + api.PathACLBootstrap:              s.aclBootstrap,
		"GET " + api.PathACLPolicies:                s.aclPolicies,
		"PUT " + api.PathACLPolicy + "{name}":       s.aclPolicySet,
		"DELETE " + api.PathACLPolicy + "{name}":    s.aclPolicyDelete,
		"GET " + api.PathACLTokens:                  s.aclTokens,
		"POST " + api.PathACLTokens:                 s.aclTokenCreate,
		"DELETE " + api.PathACLToken + "{accessor}": s.aclTokenDelete,
		"GET " + api.PathACLTokenSelf:               s.aclTokenSelf,
	} {
		mux.HandleFunc(pattern, s.withACL(h))
	}
}

// withACL guards the ACL handlers of a node without ACLs: they answer acl_disabled.
func (s *server) withACL(h func(w http.ResponseWriter, r *http.Request)) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.acl == nil {
			WriteError(w, api.Errorf(api.CodeACLDisabled, "ACLs are not enabled on this cluster (taskworker agent --acl)"))
			return
		}
		h(w, r)
	}
}

func (s *server) aclBootstrap(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	tok, err := s.acl.Bootstrap(ctx)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, tok)
}

func (s *server) aclPolicies(w http.ResponseWriter, r *http.Request) {
	out, err := s.acl.Policies(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	if out == nil {
		out = []api.ACLPolicy{}
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *server) aclPolicySet(w http.ResponseWriter, r *http.Request) {
	var p api.ACLPolicy
	if err := s.decodeBody(r, w, &p); err != nil {
		WriteError(w, err)
		return
	}
	name := r.PathValue("name")
	switch {
	case p.Name == "":
		p.Name = name
	case p.Name != name:
		WriteError(w, api.Errorf(api.CodeInvalidPolicy, "policy name %q in the body differs from %q in the path", api.Truncate(p.Name), api.Truncate(name)))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	out, err := s.acl.SetPolicy(ctx, callerOf(r), p)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *server) aclPolicyDelete(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	if err := s.acl.DeletePolicy(ctx, callerOf(r), r.PathValue("name")); err != nil {
		WriteError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) aclTokens(w http.ResponseWriter, r *http.Request) {
	out, err := s.acl.Tokens(r.Context())
	if err != nil {
		WriteError(w, err)
		return
	}
	if out == nil {
		out = []api.ACLToken{}
	}
	WriteJSON(w, http.StatusOK, out)
}

func (s *server) aclTokenCreate(w http.ResponseWriter, r *http.Request) {
	var req api.ACLTokenRequest
	if err := s.decodeBody(r, w, &req); err != nil {
		WriteError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	tok, err := s.acl.CreateToken(ctx, callerOf(r), req)
	if err != nil {
		WriteError(w, err)
		return
	}
	WriteJSON(w, http.StatusCreated, tok)
}

func (s *server) aclTokenDelete(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.opts.WriteTimeout)
	defer cancel()
	if err := s.acl.DeleteToken(ctx, callerOf(r), r.PathValue("accessor")); err != nil {
		WriteError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) aclTokenSelf(w http.ResponseWriter, r *http.Request) {
	id := callerOf(r).Identity
	out := api.ACLSelf{Principal: id.Principal, Kind: string(id.Kind), Policies: id.Policies, Management: id.Management}
	if out.Policies == nil {
		out.Policies = []string{}
	}
	out.Capabilities, out.ClusterRights = s.capabilities(r.Context(), id)
	if id.Kind == acl.KindToken {
		if tok, ok := s.acl.Token(r.Context(), id.Principal); ok {
			out.Description, out.ExpirationTime = tok.Description, tok.ExpirationTime
		}
	}
	WriteJSON(w, http.StatusOK, out)
}
