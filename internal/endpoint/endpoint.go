// Package endpoint is the public API's backend: what each route does once internal/httpapi has
// decoded it and checked the caller's rights. It is cut as Consul's agent/consul/*_endpoint.go
// are: one endpoint per resource (TaskEndpoint: tasks, their output, retry and purge;
// ScheduleEndpoint; QueueEndpoint: queues and type limits; RateLimitEndpoint; ClusterEndpoint: the cluster view and
// task types; AgentEndpoint: this node's health, leave, index and metrics; OperatorEndpoint: the
// join token, gossip keyring and digest; ACLEndpoint), each holding a pointer to one shared Server.
// Together (API) they implement httpapi.Backend, and ACLEndpoint implements httpapi.ACL.
//
// It owns the validation of writes (a submit's fields, lineage, unique keys, schedules, queue
// settings), admission control and quotas (quota.go), the mapping of FSM results to the API's
// errors, the records converted to api types (convert.go), the reading and following of a task's
// output across nodes (logs.go), and the gossip of this node's raft indexes that the cluster view
// shows. A child task a running task submits (TaskEndpoint.SubmitChild) goes through the same
// validation.
//
// It reads this node's FSM, raft's indexes and configuration, and gossip's members; it commits
// raft barriers (no command) for consistent reads; and it proposes commands only through
// Config.Propose (on the leader: the API's writes reach the leader's handlers through
// internal/forward) and Config.ProposeNode (a child task). It may not
// change raft's configuration, forward anything, call other nodes but through Config.GetFrom, run
// tasks, or touch trust material beyond the calls in Trust; what it needs of the node comes in
// through Config, and it imports no other part of the node (nor node itself).
package endpoint

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/tasks"
)

// Trust is what the operator and ACL endpoints use of this node's trust material (internal/trust).
type Trust interface {
	// Insecure reports whether the cluster runs without trust material (--insecure).
	Insecure() bool
	// CA is the cluster CA this node holds, nil with the operator's certificates.
	CA() *pki.CA
	// CurrentJoinToken returns the join token whose hash the FSM holds, from this node or another.
	CurrentJoinToken(ctx context.Context) (pki.Token, error)
	// SetJoinToken makes tok this node's copy of the join token.
	SetJoinToken(tok pki.Token)
	// LocalKeys returns this node's gossip keys, the primary first.
	LocalKeys() [][]byte
	// IsManagement reports whether credential is the cluster's management credential.
	IsManagement(credential string) bool
}

// Metrics is what the endpoints tell and serve of this node's metrics (internal/telemetry).
type Metrics interface {
	// Refused counts a request refused for an admission cap (one of AdmissionCaps).
	Refused(cap string)
	// Handler serves the Prometheus metrics.
	Handler() http.Handler
	// Throughput returns the per-second task counts of the last minutes at now.
	Throughput(now time.Time) api.Throughput
}

// Gossip is what the endpoints read of gossip membership, and the raft indexes they put in this
// node's metadata.
type Gossip interface {
	// Members returns every member gossip knows, this node included.
	Members() []membership.Member
	// Local returns this node's member.
	Local() membership.Member
	// UpdateMetaWithin changes this node's metadata and gossips it, waiting at most d.
	UpdateMetaWithin(f func(*membership.Meta), d time.Duration) error
}

// ServerNames maps raft server IDs to node names.
type ServerNames interface {
	// Name is the node name of a raft server ID (the ID itself when unknown).
	Name(id raft.ServerID) string
	// Current is the raft ID the named node runs under now, "" when unknown.
	Current(name string) raft.ServerID
}

// Config is what the endpoints work with: this node's settings, its FSM, raft, gossip and stores
// as values, and functions for what lives in the node. The functions are called only once New
// has returned.
type Config struct {
	Name          string    // this node's name
	StartedAt     time.Time // when this process made the node
	DataDir       string    // where a rotated join token is written; "" for none
	ACL           bool      // access control by ACLs is on
	JWT           *acl.JWTMethod
	MaxInputBytes int // the largest task input accepted
	// TraceURLTemplate is the console's link to a task's trace, validated by the node
	// (tracing.CheckURLTemplate); "" for none.
	TraceURLTemplate string
	Quota            QuotaConfig
	Logger           *slog.Logger

	FSM      *fsm.FSM
	Registry *tasks.Registry // the task types this node runs
	Logs     *tasks.LogStore // this node's task output
	Raft     *raft.Raft
	RaftID   raft.ServerID // this node's raft server ID
	Gossip   Gossip
	Trust    Trust
	Metrics  Metrics
	// KeyID names a gossip key as gossip metadata lists it.
	KeyID func(key []byte) string

	// Propose applies a write on this node, which must lead; an error for which Retryable holds
	// means no leader could apply it.
	Propose func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	// ProposeNode has the leader, wherever it is, apply a command this node sends itself.
	ProposeNode func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	// NewID is the ID of the i-th new object of the write in ctx: derived from the request, so
	// that a retried request finds what its first try made (internal/forward's ID).
	NewID func(ctx context.Context, i int) string
	// RequestID is the request ID of the write in ctx (internal/forward's RequestID, 16 bytes),
	// false outside one; nil: none. propose sets it on the commands the write proposes, so that
	// the FSM applies a retried write once (fsm/once.go).
	RequestID func(ctx context.Context) ([]byte, bool)
	// WaitIndex blocks until this node's FSM has applied index, or ctx ends.
	WaitIndex func(ctx context.Context, index uint64) error
	Retryable func(err error) bool
	// ShuttingDown is the error a propose gives once this node stops.
	ShuttingDown error

	// Leader is the leader's name, "" when none is known.
	Leader      func() string
	ServerNames func() ServerNames
	// Alive returns the names of the nodes gossip sees alive and able to run tasks.
	Alive func() map[string]bool
	// StorageFault is why this node's storage cannot be written, "" when it can.
	StorageFault func() string
	// Leaving reports whether this node has accepted a leave.
	Leaving func() bool
	// Released is closed once this node lets go of held requests (it is leaving): a blocking
	// read answers at once, as one whose wait elapsed, and a log follow ends.
	Released <-chan struct{}
	// Leave starts this node's graceful leave; LeaveRefused is its error for a leave that would
	// break the cluster.
	Leave        func(ctx context.Context, force bool) error
	LeaveRefused error
	// GetFrom sends an internode GET for path to the named node; stream is for a reply that
	// lasts (a log follow), which no deadline may cut.
	GetFrom func(ctx context.Context, node, path string, stream bool) (*http.Response, error)
}

// Server is what every endpoint shares: the node as Config gives it, and the validation and
// error mapping more than one endpoint uses.
type Server struct {
	cfg Config
	log *slog.Logger
	// admission is AdmissionEnv's answer, made once: the settings do not change while the node runs.
	admission *fsm.AdmissionEnv
}

// API is the public API's backend: the endpoints together implement httpapi.Backend, and ACL
// implements httpapi.ACL.
type API struct {
	*TaskEndpoint
	*ScheduleEndpoint
	*QueueEndpoint
	*RateLimitEndpoint
	*ClusterEndpoint
	*AgentEndpoint
	*OperatorEndpoint
	*WorkflowEndpoint
	ACL *ACLEndpoint

	srv *Server
}

// Repeated reports whether the write in ctx has applied already (httpapi.Repeater): it is the
// retry of a write whose first try committed.
func (a *API) Repeated(ctx context.Context) bool { return a.srv.repeated(ctx) }

var (
	_ httpapi.Repeater = (*API)(nil)
	_ httpapi.Backend  = (*API)(nil)
	_ httpapi.ACL      = (*ACLEndpoint)(nil)
)

// New returns the endpoints over cfg.
func New(cfg Config) *API {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	srv := &Server{cfg: cfg, log: cfg.Logger}
	srv.admission = &fsm.AdmissionEnv{
		MaxPending:       capOf(cfg.Quota.MaxPending),
		PrincipalPending: func(p string) int { return srv.quotaFor(p).Pending },
	}
	return &API{
		TaskEndpoint: &TaskEndpoint{srv}, ScheduleEndpoint: &ScheduleEndpoint{srv}, QueueEndpoint: &QueueEndpoint{srv},
		RateLimitEndpoint: &RateLimitEndpoint{srv},
		ClusterEndpoint:   &ClusterEndpoint{srv}, AgentEndpoint: &AgentEndpoint{srv}, OperatorEndpoint: &OperatorEndpoint{srv},
		WorkflowEndpoint: &WorkflowEndpoint{srv}, ACL: &ACLEndpoint{srv}, srv: srv,
	}
}

// apiError gives a node error its API code: shutting down, or no leader to apply a write.
// Deadlines, cancellations and other errors are left to httpapi's mapping.
func (srv *Server) apiError(err error) error {
	var ae *api.Error
	switch {
	case err == nil, errors.As(err, &ae):
		return err
	case errors.Is(err, fsm.ErrProtocolTooOld):
		return api.Errorf(api.CodeUpgradeRequired, "not yet: %v", err)
	case srv.cfg.ShuttingDown != nil && errors.Is(err, srv.cfg.ShuttingDown):
		return api.Errorf(api.CodeShuttingDown, "this node is shutting down")
	case srv.cfg.Retryable != nil && srv.cfg.Retryable(err):
		return api.Errorf(api.CodeNoLeader, "no cluster leader could apply the request: %v", err)
	}
	return err
}

// propose has the leader apply c, a command of the API write in ctx. A command the batcher does
// not merge carries the write's request ID (Config.RequestID): when a forward is retried after its
// first try applied, the FSM does not apply it again but answers fsm.Result.Repeat, which the
// endpoints answer as the write that took effect (fsm/once.go). A write that proposes more than
// one command, or whose command is made anew on every try (a secret it shows), proposes under
// withoutRequestID.
func (srv *Server) propose(ctx context.Context, c *fsm.Command) (*fsm.Result, error) {
	if c.RequestID == nil && !c.Batchable() && ctx.Value(noRequestIDKey{}) == nil {
		if id, ok := srv.requestID(ctx); ok {
			c.RequestID = id
		}
	}
	return srv.cfg.Propose(ctx, c)
}

func (srv *Server) requestID(ctx context.Context) ([]byte, bool) {
	if srv.cfg.RequestID == nil {
		return nil, false
	}
	return srv.cfg.RequestID(ctx)
}

// repeated reports whether the write in ctx has applied already: its first try committed, and
// this is its retry (a forward whose reply was lost). A handler asks before it refuses the write
// for the state its first try left, as a delete that finds nothing to delete.
func (srv *Server) repeated(ctx context.Context) bool {
	if ctx.Value(noRequestIDKey{}) != nil {
		return false
	}
	id, ok := srv.requestID(ctx)
	return ok && srv.cfg.FSM.RequestApplied(id)
}

// goneUnlessRepeated is what a delete that found nothing to delete answers: notFound, unless it
// is the retry of a delete whose first try applied (repeated), which answers as that delete did.
func (srv *Server) goneUnlessRepeated(ctx context.Context, notFound error) error {
	if srv.repeated(ctx) {
		return nil
	}
	return notFound
}

type noRequestIDKey struct{}

// withoutRequestID is ctx whose proposals carry no request ID: a write that proposes several
// commands (a purge, in batches) or one made anew on every try (a token whose secret only this
// try's reply shows), which the FSM's table of applied request IDs would wrongly take for
// repeats.
func withoutRequestID(ctx context.Context) context.Context {
	return context.WithValue(ctx, noRequestIDKey{}, true)
}

func (srv *Server) waitIndex(ctx context.Context, index uint64) error {
	return srv.cfg.WaitIndex(ctx, index)
}

// untilReleased is ctx, also cancelled once held requests are released; stop frees it.
func (srv *Server) untilReleased(ctx context.Context) (_ context.Context, stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-srv.cfg.Released:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// taskNotFound is the API's answer for an unknown ID, which it gives for a task the caller may
// not read as well: the two must not differ by a word.
func taskNotFound(id string) error { return httpapi.TaskNotFound(id) }
