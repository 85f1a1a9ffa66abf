// Package worker is this node's side of running tasks and of leaving the cluster.
//
// It owns the executor and what feeds it: keeping this node's registration in the FSM in step
// with this incarnation (RegisterLoop), handing the executor the attempts the FSM assigns here and
// stopping the ones taken away or cancelled (WorkLoop), and sending the executor's reports to the
// leader, many runs' reports per command (Reporter). It owns the graceful leave (Leave): the
// checks that refuse one, the drain, the handback of what did not finish, the leadership
// transfer, the request to the leader to drop this node from raft, and the end of the node
// (Done). It owns the release of held clients (Release, RefuseWhenClosing) and the sweep of local
// task output the cluster has forgotten (SweepLogs).
//
// It reads the FSM and raft's state and configuration, and changes raft only by asking it to
// transfer leadership. Every FSM command it sends goes through Config.ProposeNode. It may not
// touch the HTTP API's handlers, the internode server, trust (certificates, keys, tokens), the
// leader's duties or raft's setup and stores; what it needs of those comes in as functions.
package worker

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/tasks"
)

// Gossip is what the worker reads and changes of gossip membership.
type Gossip interface {
	// Local is this node's own member.
	Local() membership.Member
	// GossipAddr is this node's gossip host:port.
	GossipAddr() string
	// UpdateMeta changes this node's gossiped metadata.
	UpdateMeta(func(*membership.Meta)) error
	// Leave broadcasts a graceful leave, waiting at most timeout.
	Leave(timeout time.Duration) error
}

// Config is what a Worker works with: this node's identity and settings, its FSM, raft and
// gossip, the executor's settings, and functions for what the node owns.
type Config struct {
	Name      string    // this node's name
	BootID    string    // this process's incarnation
	StartedAt time.Time // when this process made the node
	HTTPAddr  string    // the advertised HTTP host:port, registered in the FSM
	RaftAddr  string    // raft's advertised address, registered in the FSM
	Capacity  int
	Version   string
	// Protocol is the command protocol the node registers (fsm.Node.Protocol); 0 is this
	// build's, fsm.Protocol.
	Protocol int

	RaftHeartbeat   time.Duration
	RaftElection    time.Duration
	DeadServerGrace time.Duration // the leader removes a silent raft server after this
	DrainTimeout    time.Duration // how long a leave waits for running tasks

	FSM    *fsm.FSM
	Raft   *raft.Raft
	Gossip Gossip
	Logger *slog.Logger
	// Executor configures the executor; the worker sets its Reporter and StartWindow. Registry's
	// types are the ones this node registers in the FSM; Logs is where SweepLogs deletes.
	Executor tasks.ExecutorConfig

	// ProposeNode gets a command this node sends about itself applied by the leader, wherever
	// it is, retrying across leader changes until ctx ends.
	ProposeNode func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	// StorageFault says why this node's raft storage cannot persist, or "" when it can;
	// StorageChanged returns a channel closed at its next change.
	StorageFault   func() string
	StorageChanged func() <-chan struct{}
	// Alive returns the names gossip sees alive.
	Alive func() map[string]bool
	// Leader returns the leader's name, or "".
	Leader func() string
	// ServerNames returns a snapshot of the mapping from raft server IDs to node names, as a
	// lookup that gives an unknown ID back as is; RaftID is this node's raft server ID.
	ServerNames func() func(raft.ServerID) string
	RaftID      raft.ServerID
	// LeaderAddr is the internode address of the leader, "" when unknown; AnyPeerAddr that of
	// any other alive member, "" when there is none.
	LeaderAddr  func() string
	AnyPeerAddr func() string
	// Request builds an internode request to addr, sent with Client.
	Request func(ctx context.Context, method, addr, path string, body io.Reader) (*http.Request, error)
	Client  *http.Client
	// Joined reports whether this node belongs to a cluster (it bootstrapped one, resumed its
	// raft state, or its gossip join succeeded).
	Joined func() bool
	// Shutdown stops the node abruptly; a leave ends with it.
	Shutdown func() error
}

// Worker runs this node's tasks and its leave (see the package comment).
type Worker struct {
	cfg     Config
	log     *slog.Logger
	exec    *tasks.Executor
	reports *reportBatcher // merges the executor's reports (reports.go)

	// leaveMu guards only the claim (claimLeave): checkLeave reads raft's configuration and the
	// drain is proposed through raft, and a Stop must not wait on either.
	leaveMu      sync.Mutex
	leaveStarted bool
	leaving      atomic.Bool   // a leave was accepted (not a Stop): health says draining
	done         chan struct{} // closed once the node has shut down after a leave or a Stop

	// Clients of a leaving node (release.go): closing is set once held requests are let go (new
	// requests get shutting_down); released is closed then, which answers every held wait and
	// ends every log follow.
	closing     atomic.Bool
	released    chan struct{}
	releaseOnce sync.Once
}

// New returns a Worker working with cfg, with its executor made; RegisterLoop and WorkLoop start
// it.
func New(cfg Config) *Worker {
	w := &Worker{cfg: cfg, log: cfg.Logger, done: make(chan struct{}), released: make(chan struct{})}
	var check func(*fsm.Command) error
	if cfg.FSM != nil {
		check = cfg.FSM.CheckContentProtocol
	}
	w.reports = newReportBatcher(cfg.ProposeNode, check)
	ec := cfg.Executor
	ec.Reporter, ec.StartWindow = w.Reporter(), startWindow
	w.exec = tasks.NewExecutor(ec)
	return w
}

// Timeouts of the worker's steps.
const (
	proposeTimeout     = 10 * time.Second // an executor report or a drain record reaching the leader
	registerTimeout    = 5 * time.Second  // one attempt to register this node
	removeSelfTimeout  = 10 * time.Second // a leaving node asking the leader to drop it from raft
	gossipLeaveTimeout = 5 * time.Second  // broadcasting a graceful gossip leave
	handBackTimeout    = 15 * time.Second // a drain's stopped runs wrapping up and reporting back
)

// startWindow is how long the executor holds an attempt's Started report back: an attempt that
// ends sooner (an echo takes microseconds) reports start and outcome in one raft entry, one
// serial commit fewer per task (4 → 3 with the submit and the assignment); a longer one reports
// Started when the window ends, still promptly.
const startWindow = 10 * time.Millisecond

// Executor is the executor running this node's attempts.
func (w *Worker) Executor() *tasks.Executor { return w.exec }

// Reporter is what the executor reports through: each report goes to the leader, fenced by
// attempt and boot ID, merged with other runs' reports.
func (w *Worker) Reporter() tasks.Reporter { return reporter{w, w.cfg.Name, w.cfg.BootID} }

// ReporterFor is a Reporter on behalf of a worker this node hosts (internal/workerhost): its
// reports name the worker and its session's boot ID, are fenced by them as this node's are by
// its own, and go to the leader through this node's report batcher with this node's reports. It
// implements tasks.StartFinisher.
func (w *Worker) ReporterFor(name, bootID string) tasks.Reporter { return reporter{w, name, bootID} }

// StartWindow is how long executors hold an attempt's Started report back (the node's and the
// ones it runs for its workers).
const StartWindow = startWindow

// Done is closed when the node has shut down after a graceful leave or a Stop.
func (w *Worker) Done() <-chan struct{} { return w.done }
