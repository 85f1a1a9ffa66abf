package fsm

import (
	"encoding/json"
	"fmt"
	"reflect"
	"time"
)

// CommandType names what a command does. It is the first byte of every log entry.
type CommandType uint8

// Command types. Values are stored in the raft log: never renumber, never reuse.
const (
	CmdSubmit   CommandType = 1 // add tasks (batch)
	CmdAssign   CommandType = 2 // place pending tasks on nodes (batch)
	CmdReport   CommandType = 3 // executor reports: started, checkpoint, outcome (batch)
	CmdRegister CommandType = 4 // a node announces itself (new boot ID, addresses, types)
	CmdNodeDown CommandType = 5 // a node crashed or left: take back its tasks
	CmdDrain    CommandType = 6 // a node starts (or stops) draining
	CmdCancel   CommandType = 7 // cancel tasks
	CmdRemove   CommandType = 8 // drop finished tasks past retention
	// 9, 10, 24: security.go; 11..15: acl.go; 16, 17: queue.go; 18..20: schedule.go.
	// 21 was never assigned; 25: workers.go; 26, 27: workflow.go; 29..31: ratelimit.go. Take new
	// numbers after the highest.
	CmdRetry CommandType = 22 // send failed or cancelled tasks back to pending (retry now)
	CmdPurge CommandType = 23 // drop finished tasks matching a filter
)

// Protocol is the command protocol this build speaks; nodes register it (Node.Protocol). A command
// type is written to the log only once every up node speaks at least its Since. Protocol 0 is the
// release before protocol numbers, which reads only the legacy encoding (legacy.go).
//
// Protocol 2 adds fields to existing payloads (Submit's run_at, priority, queue and unique key,
// say). A payload that uses one says so through NeedsProtocol, so the leader writes it only once
// every up node decodes it: an older replica would halt on the unknown field.
//
// Protocol 3 adds Assign.Capped: an assignment the FSM applies only while its node has a free slot,
// so that the leader can place a task right behind its submit while its scheduler loop places
// others (internal/internode's placeAtSubmit).
//
// Protocol 4 keeps secrets out of the state: JoinSecret carries the secret's hash, and Management
// (the hash of the management credential) is new.
//
// Protocol 5 adds admission control: SubmitBatch.Admission, and a quota in ACL policies.
//
// Protocol 6 adds workers (workers.go): CmdWorker, and Node's Host and Labels, which only worker
// records set.
//
// Protocol 7 adds workflows (workflow.go): CmdWorkflowSubmit and CmdWorkflowCancel.
//
// Protocol 8 adds concurrency keys (concurrency.go): Submit's concurrency key and limit, and a
// queue's key template (QueueSet).
//
// Protocol 9 adds rate limits (ratelimit.go): CmdRateLimitSet and CmdRateLimitDelete, and
// Submit's RateLimit and RateKey; and debounced submits (debounce.go): Submit's DebounceKey and
// Debounce.
//
// Protocol 10 adds waiting for child tasks (wait.go): the report kind ReportWait, the task state
// Waiting and Task's WaitFor and WaitLeft.
//
// Protocol 11 adds trace contexts (trace.go): Submit.Trace and Task.Trace.
//
// Protocol 12 adds SubmitBatch.Place (place.go): the assignments of a submit's own tasks, applied
// in the submit's entry, so that a task the leader places at its submit costs one entry.
//
// Protocol 13 adds the envelope's request ID (Command.RequestID) and the table of applied
// request IDs (once.go), so that an API write retried after its first try applied is applied
// once.
const Protocol = OnceProtocol

// NeedsProtocol is implemented by payloads whose content, not only their type, needs a protocol
// newer than their type's Since: the lowest protocol that decodes this payload as it is.
type NeedsProtocol interface {
	NeedsProtocol() int
}

// The command table: each command type registers once (register), with its payload, name,
// protocol and apply function; encoding, decoding and Apply go through the table.
// The task and node commands register here; the others register next to their apply functions
// and state, in acl.go, security.go, queue.go and schedule.go. The state they change registers
// once as well, as a Table (table.go) in the file that owns it.
func init() {
	register(Spec[SubmitBatch]{Type: CmdSubmit, Name: "submit", Apply: (*FSM).applySubmit, Prepare: prepareSubmit})
	register(Spec[AssignBatch]{Type: CmdAssign, Name: "assign", Apply: (*FSM).applyAssign})
	register(Spec[ReportBatch]{Type: CmdReport, Name: "report", Apply: (*FSM).applyReport, Prepare: prepareReport})
	register(Spec[Register]{Type: CmdRegister, Name: "register", Apply: (*FSM).applyRegister})
	register(Spec[Down]{Type: CmdNodeDown, Name: "node_down", Apply: (*FSM).applyNodeDown})
	register(Spec[Drain]{Type: CmdDrain, Name: "drain", Apply: (*FSM).applyDrain})
	register(Spec[Cancel]{Type: CmdCancel, Name: "cancel", Apply: (*FSM).applyCancel})
	register(Spec[Remove]{Type: CmdRemove, Name: "remove", Apply: (*FSM).applyRemove})
	register(Spec[Retry]{Type: CmdRetry, Name: "retry", Since: 2, Apply: (*FSM).applyRetry, Prepare: prepareRetry})
	register(Spec[Purge]{Type: CmdPurge, Name: "purge", Since: 2, Apply: (*FSM).applyPurge})
}

// Command is one raft log entry. Now is the leader's clock when it built the command; Apply uses
// it for every timestamp so replicas agree. Body is a pointer to one registered payload type
// (*SubmitBatch, *Register, ...); it names the command's type.
type Command struct {
	Now  time.Time
	Body Payload
	// RequestID, when set (RequestIDLen bytes), is the request ID of the API write that proposed
	// the command (internal/forward's RequestID): a command whose ID the FSM applied before, as
	// a forward retried after its reply was lost, is not applied again (once.go). OnceProtocol;
	// Emit leaves it out while an older node is up. Only non-batchable commands carry it.
	RequestID []byte
}

// Payload is the body of a command: a pointer to a payload type registered in the command table.
type Payload any

// Batch is implemented by payloads the leader's batcher may merge: Len items, each with its own
// ItemResult in order, and Append adds other's items (other has the same type).
type Batch interface {
	Len() int
	Append(other Payload)
}

// Type is the command's type from the table, 0 when Body is not a registered payload.
func (c *Command) Type() CommandType {
	if s := specOf(c.Body); s != nil {
		return s.typ
	}
	return 0
}

// Batchable reports whether the leader's batcher may merge c with others of its type.
func (c *Command) Batchable() bool {
	s := specOf(c.Body)
	return s != nil && s.batch
}

// Len is how many items a batch command carries, one ItemResult each; 1 for other commands.
func (c *Command) Len() int {
	if b, ok := c.Body.(Batch); ok {
		return b.Len()
	}
	return 1
}

// Merge returns one command of cs' common type holding every item of cs in order, at now; cs are
// left untouched (their callers may propose them again). It is for batchable commands only.
func Merge(now time.Time, cs []*Command) (*Command, error) {
	if len(cs) == 0 {
		return nil, fmt.Errorf("merge: no commands")
	}
	s := specOf(cs[0].Body)
	if s == nil || !s.batch {
		return nil, fmt.Errorf("merge %s: %w: not a batch command", cs[0].Type(), ErrBadCommand)
	}
	body := s.newPayload()
	for _, c := range cs {
		if specOf(c.Body) != s {
			return nil, fmt.Errorf("merge %s with %s: %w", s.name, c.Type(), ErrBadCommand)
		}
		body.(Batch).Append(c.Body)
	}
	return &Command{Now: now, Body: body}, nil
}

func (c CommandType) String() string {
	if s := commands[c]; s != nil {
		return s.name
	}
	return fmt.Sprintf("command(%d)", uint8(c))
}

// Since is the protocol that introduced t: the leader writes t only once every up node speaks it.
func (c CommandType) Since() int {
	if s := commands[c]; s != nil {
		return s.since
	}
	return Protocol + 1
}

// Spec registers one command type in the table.
type Spec[P any] struct {
	Type CommandType // stored in the log: new types take the next free number below 0x80
	Name string
	// Since is the Protocol that introduced the type (0: the release before protocol numbers).
	Since int
	// Apply changes the state; f.mu is held. Item-wise commands return one ItemResult per item in
	// order (a Batch payload must), others return their outcome as the error. *P implementing
	// Batch is what lets the leader's batcher merge the type.
	Apply func(f *FSM, index uint64, now time.Time, p *P) ([]ItemResult, error)
	// Prepare, optional, runs on the leader before the command is proposed: it may fill in fields
	// that must be decided once, by the leader (Apply must not read clocks or randomness).
	Prepare func(f *FSM, now time.Time, p *P, env PrepareEnv)
}

// PrepareEnv is what the leader lends Prepare hooks that fsm cannot compute itself.
type PrepareEnv struct {
	// Backoff is the delay before retrying a task that has failed this many times.
	Backoff func(failures int) time.Duration
	// Admission gives the caps a submit is applied under (admission.go); nil: none.
	Admission *AdmissionEnv
}

// spec is a registered command type, with the payload type erased.
type spec struct {
	typ        CommandType
	name       string
	since      int
	batch      bool
	payload    reflect.Type // pointer to the payload struct
	newPayload func() Payload
	apply      func(f *FSM, index uint64, now time.Time, p Payload) ([]ItemResult, error)
	prepare    func(f *FSM, now time.Time, p Payload, env PrepareEnv)
	decode     func(d decoder) (*Command, error)
}

var (
	commands  = map[CommandType]*spec{}
	byPayload = map[reflect.Type]*spec{}
)

// register adds a command type to the table; it panics on a clash, at init.
func register[P any](s Spec[P]) {
	if s.Type == 0 || s.Type >= 0x80 {
		panic(fmt.Sprintf("fsm: command type %d out of range 1..127 (legacy entries start at 0x80)", s.Type))
	}
	if commands[s.Type] != nil {
		panic(fmt.Sprintf("fsm: command type %d registered twice", s.Type))
	}
	if s.Apply == nil || s.Name == "" {
		panic(fmt.Sprintf("fsm: command type %d needs a name and an apply function", s.Type))
	}
	pt := reflect.TypeFor[*P]()
	if byPayload[pt] != nil {
		panic(fmt.Sprintf("fsm: payload %s registered twice", pt))
	}
	_, batch := any((*P)(nil)).(Batch)
	sp := &spec{
		typ: s.Type, name: s.Name, since: s.Since, batch: batch, payload: pt,
		newPayload: func() Payload { return new(P) },
		apply: func(f *FSM, index uint64, now time.Time, p Payload) ([]ItemResult, error) {
			return s.Apply(f, index, now, p.(*P))
		},
		decode: decodeEnvelope[P],
	}
	if s.Prepare != nil {
		sp.prepare = func(f *FSM, now time.Time, p Payload, env PrepareEnv) { s.Prepare(f, now, p.(*P), env) }
	}
	commands[s.Type] = sp
	byPayload[pt] = sp
}

func specOf(p Payload) *spec {
	if p == nil {
		return nil
	}
	return byPayload[reflect.TypeOf(p)]
}

// Prepare stamps c with the leader's clock and runs its type's Prepare hook. The leader calls it
// once before proposing; replicas never do.
func (f *FSM) Prepare(c *Command, now time.Time, env PrepareEnv) {
	c.Now = now
	if s := specOf(c.Body); s != nil && s.prepare != nil {
		s.prepare(f, now, c.Body, env)
	}
}

// The payloads, one per command type.

// SubmitBatch adds tasks.
type SubmitBatch struct {
	Items []Submit `msgpack:"items"`
	// Admission is what the items are admitted under, stamped by the leader (prepareSubmit).
	// Protocol 5.
	Admission *Admission `msgpack:"admission,omitempty"`
	// Place assigns tasks the items create, after the items are applied, as capped assignments
	// (applyPlace): the leader's placement at submit (internal/internode's placeAtSubmit), made
	// after the batch's items were merged. PlaceProtocol.
	Place []Assign `msgpack:"place,omitempty"`
}

// AssignBatch places pending tasks on node incarnations.
type AssignBatch struct {
	Items []Assign `msgpack:"items"`
	// Due names scheduled tasks whose RunAt has come (by the command's time): they become
	// pending before Items are applied. Protocol 2 (delayed tasks exist only from then on).
	Due []string `msgpack:"due,omitempty"`
}

// NeedsProtocol implements NeedsProtocol: 3 with a capped assignment, 2 when it promotes delayed
// tasks.
func (b *AssignBatch) NeedsProtocol() int {
	for _, a := range b.Items {
		if a.Capped {
			return 3
		}
	}
	if len(b.Due) > 0 {
		return 2
	}
	return 0
}

// ReportBatch carries executor reports.
type ReportBatch struct {
	Items []Report `msgpack:"items"`
}

// Register announces a node incarnation.
type Register struct {
	Node Node `msgpack:"node"`
}

// Down marks a node down (crashed) or left, and takes back its tasks.
type Down struct {
	Name   string `msgpack:"name"`
	Left   bool   `msgpack:"left,omitempty"`
	Reason string `msgpack:"reason,omitempty"`
}

// Drain sets or clears a node's draining flag.
type Drain struct {
	Name     string `msgpack:"name"`
	Draining bool   `msgpack:"draining,omitempty"`
}

// Cancel cancels tasks.
type Cancel struct {
	IDs []string `msgpack:"ids"`
}

// Remove drops finished tasks.
type Remove struct {
	IDs []string `msgpack:"ids"`
}

// Retry sends failed or cancelled tasks back to pending for a new attempt, their failures reset.
type Retry struct {
	IDs []string `msgpack:"ids"`
	By  string   `msgpack:"by,omitempty"` // who asked, for the history
	// Admission holds the retried tasks to the caps on waiting tasks, as a submit (prepareRetry):
	// retrying finished tasks must not pass them. Protocol 5.
	Admission *Admission `msgpack:"admission,omitempty"`
}

// NeedsProtocol implements NeedsProtocol: AdmissionProtocol with caps.
func (p *Retry) NeedsProtocol() int {
	if p.Admission != nil {
		return AdmissionProtocol
	}
	return 0
}

// Purge drops finished tasks that match a filter, at most Limit of them (purgeMatches says which
// first). Apply evaluates the filter on the state at its index, so every replica drops the same
// tasks and nothing can change between choosing them and dropping them.
//
// Not Remove (8) with IDs the leader picked: Remove is the leader's retention's, and a filter
// needs no round of reads before the write.
type Purge struct {
	// States are the terminal states to drop (empty: all three).
	States []State `msgpack:"states,omitempty"`
	Type   string  `msgpack:"type,omitempty"`
	// FinishedBefore, when set, keeps tasks that finished at or after it.
	FinishedBefore *time.Time `msgpack:"finished_before,omitempty"`
	// Limit is the most tasks one entry drops (MaxPurgeBatch when 0 or more).
	Limit int `msgpack:"limit,omitempty"`
}

// MaxPurgeBatch is the most tasks one purge entry drops, so one entry stays short to apply.
const MaxPurgeBatch = 1000

// Len implements Batch.
func (b *SubmitBatch) Len() int { return len(b.Items) }

// Append implements Batch. It takes other's items and caps, not its Place: the leader places a
// merged batch's tasks after merging it.
func (b *SubmitBatch) Append(o Payload) {
	ob := o.(*SubmitBatch)
	b.Items = append(b.Items, ob.Items...)
	if ob.Admission != nil {
		if b.Admission == nil {
			b.Admission = &Admission{}
		}
		b.Admission.merge(ob.Admission)
	}
}

// Len implements Batch.
func (b *ReportBatch) Len() int { return len(b.Items) }

// Append implements Batch.
func (b *ReportBatch) Append(o Payload) { b.Items = append(b.Items, o.(*ReportBatch).Items...) }

// Submit adds one task. ID and ExecutionID are chosen before Apply.
type Submit struct {
	ID             string          `msgpack:"id"`
	Type           string          `msgpack:"type"`
	Version        string          `msgpack:"version"`
	Input          json.RawMessage `msgpack:"input"`
	MaxAttempts    int             `msgpack:"max_attempts"`
	Timeout        Duration        `msgpack:"timeout"`
	IdempotencyKey string          `msgpack:"idempotency_key,omitempty"`
	ExecutionID    string          `msgpack:"execution_id"`
	ParentID       string          `msgpack:"parent_id,omitempty"`
	// SubmittedBy is the principal that submitted the task (an ACL token's accessor ID, a JWT
	// subject, "anonymous"), set by the node that authorized the request. It is only set with
	// ACLs on, which needs an ACL bootstrap (a protocol 1 command) first: a replica that meets
	// the field has applied that bootstrap, so it is a build that knows the field. Without ACLs
	// it is empty and omitted, and entries stay readable by every build.
	SubmittedBy string `msgpack:"submitted_by,omitempty"`

	// Fields from protocol 2 on (omitempty, and listed in needsProtocol) go below.

	// Schedule names the schedule that submitted the task (schedule_fire sets it).
	Schedule string `msgpack:"schedule,omitempty"`
	// UniqueKey, with UniqueFor (> 0, at most MaxUniqueFor), refuses the submit while another
	// task of its type with the key was created less than that task's window ago (UniqueLock).
	UniqueKey string   `msgpack:"unique_key,omitempty"`
	UniqueFor Duration `msgpack:"unique_for,omitempty"`
	// RunAt delays the task: it is scheduled until then (the leader chose it from run_at or
	// delay, so replicas agree).
	RunAt *time.Time `msgpack:"run_at,omitempty"`
	// Priority: higher is placed first; 0 by default.
	Priority int `msgpack:"priority,omitempty"`
	// Queue names the task's queue; "" is the default queue.
	Queue string `msgpack:"queue,omitempty"`
	// ConcurrencyKey, with ConcurrencyLimit (1..MaxConcurrencyLimit), holds the task to at most
	// that many tasks with the key assigned or running at once. Protocol 8.
	ConcurrencyKey   string `msgpack:"concurrency_key,omitempty"`
	ConcurrencyLimit int    `msgpack:"concurrency_limit,omitempty"`

	// Fields from RateLimitProtocol on.

	// RateLimit names the rate limit (ratelimit.go) the task starts under, RateKey its bucket in
	// that limit ("" the limit's own).
	RateLimit string `msgpack:"rate_limit,omitempty"`
	RateKey   string `msgpack:"rate_key,omitempty"`
	// DebounceKey, with Debounce (> 0, at most MaxDebounce), debounces the submit: while a task of
	// its type with the key has not started yet, the submit gives that task its input and moves its
	// start to Debounce after the command's time, instead of adding a task (debounce.go).
	DebounceKey string   `msgpack:"debounce_key,omitempty"`
	Debounce    Duration `msgpack:"debounce,omitempty"`

	// Trace is the trace the task's spans join (TraceProtocol); nil: none.
	Trace *TraceContext `msgpack:"trace,omitempty"`
}

// needsProtocol is the lowest protocol that decodes s: the newest protocol among the fields it
// sets (TraceProtocol with a trace context, RateLimitProtocol with a rate limit or a debounce,
// ConcurrencyProtocol with a concurrency key, 2 for the fields protocol 1 does not know; each such
// field is checked here), else 0 (the type's Since and Emit's legacy rules decide the rest).
func (s *Submit) needsProtocol() int {
	need := s.traceNeedsProtocol()
	if s.RateLimit != "" || s.RateKey != "" || s.DebounceKey != "" || s.Debounce != 0 {
		need = max(need, RateLimitProtocol)
	}
	if s.ConcurrencyKey != "" || s.ConcurrencyLimit != 0 {
		need = max(need, ConcurrencyProtocol)
	}
	if s.Schedule != "" || s.UniqueKey != "" || s.UniqueFor != 0 || s.RunAt != nil || s.Priority != 0 || s.Queue != "" {
		need = max(need, 2)
	}
	return need
}

// NeedsProtocol implements NeedsProtocol: the highest of its items', AdmissionProtocol with caps,
// PlaceProtocol with assignments.
func (b *SubmitBatch) NeedsProtocol() int {
	if len(b.Place) > 0 {
		return PlaceProtocol
	}
	need := 0
	if b.Admission != nil {
		need = AdmissionProtocol
	}
	for i := range b.Items {
		need = max(need, b.Items[i].needsProtocol())
	}
	return need
}

// NeedsProtocol implements NeedsProtocol: a wait (ReportWait) needs WaitProtocol, a final error
// (TaskError.Final) protocol 2.
func (b *ReportBatch) NeedsProtocol() int {
	need := 0
	for i := range b.Items {
		if b.Items[i].Kind == ReportWait || b.Items[i].WaitFor != nil {
			return WaitProtocol
		}
		if e := b.Items[i].Error; e != nil && e.Final {
			need = 2
		}
	}
	return need
}

// Assign places a pending task on a node incarnation.
type Assign struct {
	TaskID string `msgpack:"task_id"`
	Node   string `msgpack:"node"`
	BootID string `msgpack:"boot_id"`
	// Capped: the FSM applies the assignment only while the node has a free slot and the task is
	// due (past its retry backoff), and leaves the task pending otherwise. Two proposers place tasks from protocol 3 on, the scheduler
	// loop and the leader's placement right behind a submit (internal/internode's placeAtSubmit), each from a
	// view that may miss the other's latest assignments, so both cap theirs. Protocol 3; an
	// uncapped assignment (an older leader's) is the proposer's word, as before.
	Capped bool `msgpack:"capped,omitempty"`
}

// ReportKind is what an executor reports about an attempt.
type ReportKind uint8

// Report kinds.
const (
	ReportStarted     ReportKind = 1
	ReportCheckpoint  ReportKind = 2
	ReportSucceeded   ReportKind = 3
	ReportFailed      ReportKind = 4
	ReportCancelled   ReportKind = 5
	ReportInterrupted ReportKind = 6 // handed back on drain: runs again, not a failure
	// ReportWait ends the attempt to wait for child tasks (Report.WaitFor): the task is Waiting,
	// without a slot, until they have all finished (wait.go). Protocol 10.
	ReportWait ReportKind = 7
)

// Report is one executor report, fenced by (Node, BootID, Attempt).
type Report struct {
	TaskID     string          `msgpack:"task_id"`
	Attempt    int             `msgpack:"attempt"`
	Node       string          `msgpack:"node"`
	BootID     string          `msgpack:"boot_id"`
	Kind       ReportKind      `msgpack:"kind"`
	Result     json.RawMessage `msgpack:"result,omitempty"`
	Error      *TaskError      `msgpack:"error,omitempty"`
	Checkpoint json.RawMessage `msgpack:"checkpoint,omitempty"`
	// NotBefore is when a failed attempt may be retried; the leader computes the backoff.
	NotBefore *time.Time `msgpack:"not_before,omitempty"`
	// WaitFor are the child tasks a ReportWait waits for. Protocol 10.
	WaitFor []string `msgpack:"wait_for,omitempty"`
}

// prepareReport stamps each failed report with its retry deadline: the backoff depends on the
// task's failures so far, which only the leader may read before the command is ordered.
func prepareReport(f *FSM, now time.Time, p *ReportBatch, env PrepareEnv) {
	if env.Backoff == nil {
		return
	}
	for i := range p.Items {
		r := &p.Items[i]
		if r.Kind != ReportFailed {
			continue
		}
		failures := 1
		if t, ok := f.Task(r.TaskID); ok {
			failures = t.Failures + 1
		}
		nb := now.Add(env.Backoff(failures))
		r.NotBefore = &nb
	}
}

// Result is what Apply returns for a command: the log index, and one entry per item for batches.
type Result struct {
	Index uint64
	// Items holds, per submit/assign/report/cancel/remove item in order, the task ID it concerns.
	Items []ItemResult
	Err   error
	// Repeat marks a command whose request ID had applied already (once.go): its body was not
	// applied again, Items is empty and Err nil; the write took effect at its first try.
	Repeat bool
}

// ItemResult is the outcome of one item of a batch command.
type ItemResult struct {
	ID       string
	Existing bool // submit: the idempotency key was seen; ID is the existing task
	Err      error
}
