// Package leader runs a node's duties while it leads the raft cluster. It owns when they run (they
// start once this node leads and its FSM holds every committed entry, and stop when it no longer
// leads) and the duties themselves: keeping raft's configuration in step with gossip (reconcile.go),
// recording gone nodes in the FSM (nodes.go), the scheduler loop, and firing the schedules' ticks
// (schedules.go). It also keeps when each member was first seen gone, from gossip's events.
//
// It makes raft configuration changes on the *raft.Raft it is given, and proposes FSM commands only
// through Config.Apply. It may not touch the HTTP API, forwarding, the executor, trust (certificates,
// keys, tokens) or raft's setup and stores; what it needs of those comes in as functions. It never
// holds a mutex across a raft call: gossip's event loop (NoteMemberEvent) must not wait for one.
package leader

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/scheduler"
)

// Gossip is what the leader reads of gossip membership.
type Gossip interface {
	// Members returns every member gossip knows, this node included.
	Members() []membership.Member
	// Ping probes the named member directly; nil when it answered.
	Ping(name string) error
}

// Config is what a Loop works with: this node's raft, FSM and gossip, its settings, and functions
// for what the node owns.
type Config struct {
	Name   string        // this node's name
	RaftID raft.ServerID // this node's raft server ID
	Raft   *raft.Raft
	FSM    *fsm.FSM
	Gossip Gossip
	Logger *slog.Logger

	Voters          int           // the voter target
	DeadServerGrace time.Duration // a crashed raft server is removed after this
	Retention       time.Duration // the scheduler's retention of finished tasks; 0 = keep
	ApplyTimeout    time.Duration // one schedule fire

	// Apply applies a command through this node's raft (it leads) and returns the FSM's result.
	Apply func(ctx context.Context, c *fsm.Command) (*fsm.Result, error)
	// Await waits for a raft future, giving up when the node shuts down.
	Await func(raft.Future) error
	// Alive returns the names of the nodes placement may use.
	Alive func() map[string]bool
	// RetainedCap and Trimmed are the scheduler.Loop's fields of the same names.
	RetainedCap func(principal string) int
	Trimmed     func(n int)
	// PrepareFire builds a schedule's fire (its task's ID and version) as a submit would; with an
	// error, the fire it returns is still recorded, with the reason.
	PrepareFire func(s *fsm.Schedule) (fsm.ScheduleFire, error)
	// OnLead runs once this node leads and its FSM has caught up, before the duties start.
	OnLead func(ctx context.Context)

	// MemberID is the raft server ID a gossip member runs under.
	MemberID func(m membership.Member) raft.ServerID
	// NoteID remembers which node a member's raft ID belongs to.
	NoteID func(m membership.Member)
	// ServerNames returns a snapshot of the mapping from raft server IDs to node names, as a
	// lookup that gives an unknown ID back as is.
	ServerNames func() func(raft.ServerID) string
	// OnConfiguration, when set, is given raft's configuration at every reconcile pass.
	OnConfiguration func(raft.Configuration)
}

// Loop runs the leader's duties (Run) and takes gossip's events for them (NoteMemberEvent,
// MembershipChanged).
type Loop struct {
	cfg       Config
	kick      chan struct{} // gossip membership changed: wake the reconciler
	schedKick chan struct{} // gossip membership changed: wake the scheduler (liveness decides placement)
	deadMu    sync.Mutex
	deadSince map[string]time.Time // when each member was first seen failed or gone
}

// New returns a Loop working with cfg; Run starts it.
func New(cfg Config) *Loop {
	return &Loop{cfg: cfg, kick: make(chan struct{}, 1), schedKick: make(chan struct{}, 1), deadSince: map[string]time.Time{}}
}

// Timeouts of the leader's steps.
const (
	barrierTimeout    = 10 * time.Second // a new leader catching up with the log
	nodeDownTimeout   = 5 * time.Second  // recording a gone node
	raftChangeTimeout = 5 * time.Second  // one raft configuration change (add, promote, remove)
)

// reconcileInterval is how often the leader reconciles membership without a gossip event.
const reconcileInterval = 250 * time.Millisecond

// Run runs the leader's duties for as long as this node leads, until ctx ends.
func (l *Loop) Run(ctx context.Context) {
	r := l.cfg.Raft
	obs := make(chan raft.Observation, 16)
	observer := raft.NewObserver(obs, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	r.RegisterObserver(observer)
	defer r.DeregisterObserver(observer)
	var (
		stop context.CancelFunc
		done chan struct{}
	)
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		if done != nil {
			select {
			case <-done: // lead gave up (its barrier failed): start over if still leader
				stop()
				stop, done = nil, nil
			default:
			}
		}
		leader := r.State() == raft.Leader
		switch {
		case leader && stop == nil:
			var lctx context.Context
			lctx, stop = context.WithCancel(ctx)
			done = make(chan struct{})
			go func() {
				defer close(done)
				l.lead(lctx)
			}()
		case !leader && stop != nil:
			stop()
			<-done
			stop, done = nil, nil
		}
		select {
		case <-ctx.Done():
			if stop != nil {
				stop()
				<-done
			}
			return
		case <-obs:
		case <-check.C:
		}
	}
}

// lead is the leader's work: catch up, reconcile membership, schedule.
func (l *Loop) lead(ctx context.Context) {
	log := l.cfg.Logger
	log.Info("gained leadership")
	defer log.Info("leadership ended")
	// The FSM must hold every committed entry before we judge which nodes hold which tasks.
	if err := l.cfg.Await(l.cfg.Raft.Barrier(barrierTimeout)); err != nil {
		log.Warn("barrier after election", "err", err)
		return
	}
	if l.cfg.OnLead != nil {
		l.cfg.OnLead(ctx)
	}
	reconcile := func(ctx context.Context) {
		l.reconcileNodes(ctx)
		l.reconcileRaft()
	}
	leaderDuties(ctx, l.loops, reconcile, l.kick, reconcileInterval)
}

// loops runs the scheduler and the schedules' loop until ctx ends, and returns once both have.
func (l *Loop) loops(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.scheduleLoop(ctx)
	}()
	l.schedulerLoop().Run(ctx)
	<-done
}

// schedulerLoop is the leader's scheduler, woken by FSM changes and by membership changes:
// liveness decides placement, and a node seen alive or dead changes no FSM state by itself.
func (l *Loop) schedulerLoop() *scheduler.Loop {
	return &scheduler.Loop{
		FSM:         l.cfg.FSM,
		Apply:       l.cfg.Apply,
		Alive:       l.cfg.Alive,
		Kick:        l.schedKick,
		Retention:   l.cfg.Retention,
		RetainedCap: l.cfg.RetainedCap,
		Trimmed:     l.cfg.Trimmed,
		Logger:      l.cfg.Logger.With("component", "scheduler"),
	}
}

// leaderDuties runs schedule, and reconcile on every kick and tick, until ctx ends. It returns
// only once schedule has returned too: Run starts a new term's duties when lead returns, and two
// scheduler loops would race to place the same tasks.
func leaderDuties(ctx context.Context, schedule, reconcile func(context.Context), kick <-chan struct{}, every time.Duration) {
	scheduled := make(chan struct{})
	go func() {
		defer close(scheduled)
		schedule(ctx)
	}()
	defer func() { <-scheduled }()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-tick.C:
		}
	}
}

// MembershipChanged wakes the reconciler and the scheduler, without waiting: each holds at most
// one pending wake-up, and one pass sees every change before it.
func (l *Loop) MembershipChanged() {
	for _, ch := range []chan struct{}{l.kick, l.schedKick} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// NoteMemberEvent records when a member was first seen failed or gone (deadFor), and forgets it
// when the member joins again. Gossip's event loop calls it for every event, so it holds deadMu
// only for the map, never across a raft call.
func (l *Loop) NoteMemberEvent(ev membership.Event) {
	l.cfg.NoteID(ev.Member)
	l.deadMu.Lock()
	defer l.deadMu.Unlock()
	switch ev.Type {
	case membership.EventFail, membership.EventLeave:
		if _, ok := l.deadSince[ev.Member.Name]; !ok {
			l.deadSince[ev.Member.Name] = time.Now()
		}
	case membership.EventJoin:
		delete(l.deadSince, ev.Member.Name)
	}
}

// deadFor returns how long the named member has been seen gone, starting the count now when it
// was not yet.
func (l *Loop) deadFor(name string) time.Duration {
	l.deadMu.Lock()
	defer l.deadMu.Unlock()
	since, ok := l.deadSince[name]
	if !ok {
		since = time.Now()
		l.deadSince[name] = since
	}
	return time.Since(since)
}
