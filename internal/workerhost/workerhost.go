// Package workerhost is a node's side of the worker protocol (docs/workers.md): the sessions of
// the workers that registered with this node, their leases, the long polls that hand them their
// assignments and the events they report.
//
// It owns, per session, a tasks.Executor whose handlers are remote: each attempt the FSM assigns
// to the worker runs here, on the worker's behalf, through the node's own executor machinery (a
// work loop, fenced reports through the node's report batcher). A handler puts its assignment in
// the session's outbox and waits for the worker's events; log lines go to the task's output,
// checkpoints and outcomes to the executor, which reports them as a node's.
//
// It guarantees that a session ID is a 128-bit secret compared in constant time and never
// logged; that a session whose worker stops polling for longer than its lease is ended (its runs
// stopped without another report, its worker proposed down under its session's BootID, so a
// late down never takes a newer session down); and that every call after registration checks
// the caller again.
//
// It proposes only worker commands (fsm.WorkerChange), through Config.Propose. It may not touch
// raft, gossip, the HTTP server or the node's own executor; what it needs of the node comes in
// through Config.
package workerhost

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/tasks"
)

// Caller is who makes a call: what httpapi resolved of its credential.
type Caller interface {
	// Allow checks a task capability on a type (nil: allowed).
	Allow(capability acl.Capability, taskType string) error
	// Principal is the caller's identity ("" without ACLs).
	Principal() string
}

// Config is what a Host works with.
type Config struct {
	Node     string // this node's name
	HTTPAddr string // this node's advertised HTTP address, which serves the workers' logs
	FSM      *fsm.FSM
	Logger   *slog.Logger
	// Executor is the template of each session's executor: Logs, limits, Logger. Registry,
	// Reporter, NodeName and OnFinish are the session's own.
	Executor tasks.ExecutorConfig
	// Propose has the leader apply a command this node sends (the node's ProposeNode).
	Propose func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	// ReporterFor is the node's reporter on behalf of a worker (internal/worker's ReporterFor).
	ReporterFor func(name, bootID string) tasks.Reporter
	// WorkFor runs the work loop of a worker's session until ctx ends (internal/worker's WorkFor).
	WorkFor func(ctx context.Context, name, bootID string, exec *tasks.Executor, rep tasks.Reporter)
	// Draining reports whether this node is leaving: its workers are told to drain.
	Draining func() bool
	// MaxSessions caps the sessions this node holds (DefaultMaxSessions when 0).
	MaxSessions int
}

// DefaultMaxSessions is the most worker sessions a node holds by default.
const DefaultMaxSessions = 1024

// Timeouts of the host's steps.
const (
	proposeTimeout = 10 * time.Second // a worker command reaching the leader
	handBackWait   = 15 * time.Second // a DELETE's runs reporting their handback
	cancelGrace    = 5 * time.Second  // a cancelled run waiting for the worker's outcome
	downRetryFor   = 30 * time.Second // how long a lost worker's down is retried
)

// Host holds this node's worker sessions.
type Host struct {
	cfg  Config
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup

	mu       sync.Mutex
	sessions map[string]*session // by secret ID
	byName   map[string]*session
	// left are the sessions a DELETE ended lately, by secret ID: the DELETE tried again after its
	// reply was lost answers as the one that took effect (Delete).
	left   map[string]leftSession
	closed bool
	// waiting: Close waits for the host's goroutines (wg); none starts from then on (goTracked).
	waiting bool
}

// New returns a Host; Run watches its sessions' leases and records until Close.
func New(cfg Config) *Host {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = DefaultMaxSessions
	}
	if cfg.Draining == nil {
		cfg.Draining = func() bool { return false }
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Host{cfg: cfg, log: cfg.Logger.With("component", "workerhost"), ctx: ctx, stop: stop,
		sessions: map[string]*session{}, byName: map[string]*session{}, left: map[string]leftSession{}}
}

// leftKeep is how long a session a DELETE ended is remembered: a client retries a DELETE whose
// reply was lost within seconds.
const leftKeep = 2 * time.Minute

// leftSession is a session a DELETE ended: whose it was, and when.
type leftSession struct {
	principal string
	at        time.Time
}

// noteLeft remembers s, which a DELETE ended at now, forgetting those older than leftKeep; at
// most MaxSessions are kept.
func (h *Host) noteLeft(s *session, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, l := range h.left {
		if now.Sub(l.at) > leftKeep || len(h.left) >= h.cfg.MaxSessions {
			delete(h.left, id)
		}
	}
	h.left[s.id] = leftSession{principal: s.principal, at: now}
}

// leftLately reports whether a DELETE by caller ended the session id within leftKeep of now.
func (h *Host) leftLately(id string, caller Caller, now time.Time) bool {
	h.mu.Lock()
	l, ok := bySecretID(h.left, id)
	h.mu.Unlock()
	return ok && now.Sub(l.at) <= leftKeep &&
		subtle.ConstantTimeCompare([]byte(l.principal), []byte(caller.Principal())) == 1
}

// bySecretID returns m's value for the secret session ID id. It compares id with every key in
// constant time, so how long a guess takes tells nothing of the IDs held.
func bySecretID[V any](m map[string]V, id string) (V, bool) {
	var found V
	ok := false
	for sid, v := range m {
		if subtle.ConstantTimeCompare([]byte(sid), []byte(id)) == 1 {
			found, ok = v, true
		}
	}
	return found, ok
}

// Run ends sessions whose lease ran out and those the FSM no longer holds up, and tells
// sessions to drain when their worker's record or this node drains, until ctx ends or Close.
func (h *Host) Run(ctx context.Context) {
	tick := time.NewTicker(leaseCheck)
	defer tick.Stop()
	for {
		changed := h.cfg.FSM.Changed()
		h.check(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-h.ctx.Done():
			return
		case <-tick.C:
		case <-changed:
		}
	}
}

// leaseCheck is how often leases are checked: a lost worker is noticed at most this late.
const leaseCheck = 50 * time.Millisecond

func (h *Host) check(now time.Time) {
	h.mu.Lock()
	all := make([]*session, 0, len(h.sessions))
	for _, s := range h.sessions {
		all = append(all, s)
	}
	h.mu.Unlock()
	hostDraining := h.cfg.Draining()
	if hn, ok := h.cfg.FSM.Node(h.cfg.Node); ok && hn.Draining {
		hostDraining = true
	}
	for _, s := range all {
		if s.leaseLost(now) {
			h.log.Warn("worker lost its lease; taking it down", "worker", s.name, "lease", s.lease)
			h.end(s, endLost)
			continue
		}
		rec, ok := h.cfg.FSM.Worker(s.name)
		if s.registered() && (!ok || rec.BootID != s.bootID || rec.Status != fsm.NodeUp) {
			// Taken down by the cluster (this node was declared down, or a new session of its
			// name replaced it): the session is over, and nothing of it may land.
			h.log.Warn("worker's record is no longer this session's; ending it", "worker", s.name)
			h.end(s, endGone)
			continue
		}
		if hostDraining && s.setDraining() {
			h.goTracked(func() { h.proposeDrain(s) }) // none once Close waits: the node is down
		}
	}
}

// Close ends every session (its runs revoked; its worker goes down with this node) and waits
// for the host's goroutines.
func (h *Host) Close() {
	h.mu.Lock()
	h.closed = true
	all := make([]*session, 0, len(h.sessions))
	for _, s := range h.sessions {
		all = append(all, s)
	}
	h.mu.Unlock()
	for _, s := range all {
		h.end(s, endGone)
	}
	h.stop()
	h.mu.Lock()
	h.waiting = true
	h.mu.Unlock()
	h.wg.Wait()
}

// goTracked runs f in a goroutine that Close waits for, unless Close already waits, and reports
// whether it did. The goroutine is counted under h.mu, which Close takes before it waits: each
// count is ordered before that wait (sync.WaitGroup's rule for an Add from zero), so Close never
// returns while a goroutine of the host is still to start, and the host starts nothing after.
func (h *Host) goTracked(f func()) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.waiting {
		return false
	}
	h.wg.Go(f)
	return true
}

// Sessions returns how many sessions this node holds.
func (h *Host) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// newSecret is a session ID: 128 random bits, hex.
func newSecret() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// lookup finds the session of a secret ID in constant time per session, and checks caller on it:
// the same principal that registered it, still holding work on its every type. A caller that
// lost work ends the session (403); an unknown ID is 404 and changes nothing.
func (h *Host) lookup(id string, caller Caller) (*session, error) {
	h.mu.Lock()
	found, _ := bySecretID(h.sessions, id)
	h.mu.Unlock()
	if found == nil || found.ended() {
		return nil, errUnknownWorker()
	}
	if subtle.ConstantTimeCompare([]byte(found.principal), []byte(caller.Principal())) != 1 {
		return nil, errUnknownWorker() // another identity: the session is not theirs to see
	}
	for _, t := range found.types {
		if err := caller.Allow(acl.CapWork, t.Type); err != nil {
			h.log.Warn("worker's token no longer holds work on its types; ending its session", "worker", found.name)
			h.end(found, endLost)
			return nil, api.Errorf(api.CodeForbidden, "%v", err)
		}
	}
	return found, nil
}

func errUnknownWorker() error {
	return api.Errorf(api.CodeUnknownWorker, "no such worker session on this node: it ended (lease lost, token revoked, node restarted); register again")
}

// endHow says how a session ends.
type endHow int

const (
	endLost endHow = iota // lease lost or access revoked: revoke its runs, propose it down
	endGone               // the cluster took it down already: revoke its runs, propose nothing
	endLeft               // DELETE: its runs were handed back; propose it left
)

// end ends s: no call finds it from now on, its work loop stops, its runs are revoked (endLeft:
// were handed back by Delete), and its worker is proposed down when it was lost. Only the first
// call acts.
func (h *Host) end(s *session, how endHow) {
	s.ending.Store(true)
	if !s.markEnded() {
		return
	}
	h.mu.Lock()
	delete(h.sessions, s.id)
	if h.byName[s.name] == s {
		delete(h.byName, s.name)
	}
	h.mu.Unlock()
	if how == endLeft {
		return // Delete closes the executor and proposes the down itself
	}
	s.stopLoop()
	s.exec.StopAll(tasks.StopRevoke) // nothing more of it is reported
	if !h.goTracked(func() {
		s.exec.Close()
		if how == endLost && s.registered() {
			_ = h.proposeDown(s, false, "worker "+s.name+" lost its lease")
		}
	}) {
		// Close is over its sessions and the node goes down with its workers: the runs stop
		// here, and nothing is proposed.
		s.exec.Close()
	}
}

// proposeDown proposes s's worker down, retrying across leader changes for a while; a refusal
// as stale (a newer session) or unknown ends it.
func (h *Host) proposeDown(s *session, left bool, reason string) error {
	c := &fsm.Command{Body: &fsm.WorkerChange{Op: fsm.WorkerDown, Name: s.name, BootID: s.bootID, Left: left, Reason: reason}}
	deadline := time.Now().Add(downRetryFor)
	for {
		ctx, cancel := context.WithTimeout(h.ctx, proposeTimeout)
		_, err := h.cfg.Propose(ctx, c)
		cancel()
		if err == nil || errors.Is(err, fsm.ErrStale) || errors.Is(err, fsm.ErrUnknownNode) {
			return nil
		}
		if time.Now().After(deadline) || h.ctx.Err() != nil {
			h.log.Warn("worker down not recorded", "worker", s.name, "err", err)
			return err
		}
		select {
		case <-h.ctx.Done():
			return h.ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (h *Host) proposeDrain(s *session) {
	c := &fsm.Command{Body: &fsm.WorkerChange{Op: fsm.WorkerDrain, Name: s.name, BootID: s.bootID, Draining: true}}
	ctx, cancel := context.WithTimeout(h.ctx, proposeTimeout)
	defer cancel()
	if _, err := h.cfg.Propose(ctx, c); err != nil && !errors.Is(err, fsm.ErrStale) {
		h.log.Warn("worker drain not recorded", "worker", s.name, "err", err)
	}
}

// apiError gives the errors of a worker command their API codes.
func apiError(err error) error {
	var ae *api.Error
	switch {
	case err == nil, errors.As(err, &ae):
		return err
	case errors.Is(err, fsm.ErrWorkerExists):
		return api.Errorf(api.CodeWorkerExists, "%v", err)
	case errors.Is(err, fsm.ErrProtocolTooOld):
		return api.Errorf(api.CodeUpgradeRequired, "not yet: %v", err)
	case errors.Is(err, fsm.ErrUnknownNode):
		return api.Errorf(api.CodeShuttingDown, "this node is not up in the cluster: %v", err)
	}
	return err
}

// durationText is d as the protocol writes durations.
func durationText(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.String()
}

// rawOrNull is b, or JSON null when empty.
func rawOrNull(b json.RawMessage) json.RawMessage {
	if len(b) == 0 {
		return json.RawMessage("null")
	}
	return b
}
