package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// pairCommands generates n commands over a few tasks and nodes in which report entries carry
// many starts with their ends (reportPair), in every variation: each outcome, either report
// stale, a start of a task already running, the same task twice in one entry, a start whose end
// comes in the next entry, tasks with concurrency keys, parents, sub-executions and cancels
// asked for. ref applies them as they are made, so most apply.
func pairCommands(t *testing.T, rng *rand.Rand, n int) []*Command {
	t.Helper()
	ref := New()
	ids := []string{"a", "b", "c", "d", "e", "f"}
	nodes := []string{"n1", "n2", "n3"}
	boots := map[string]int{}
	pick := func(s []string) string { return s[rng.IntN(len(s))] }
	bootOf := func(node string) string { return fmt.Sprintf("%s-b%d", node, boots[node]) }
	var carried []Report // ends held back for the next report entry
	var cmds []*Command
	for i := range n {
		now := t0.Add(time.Duration(i) * time.Second)
		var body Payload
		switch k := rng.IntN(20); {
		case i < 3 || k == 0:
			node := nodes[min(i, len(nodes)-1)]
			if i >= 3 {
				node = pick(nodes)
				boots[node]++ // a restart: its tasks are taken back
			}
			body = &Register{Node: Node{Name: node, BootID: bootOf(node), Capacity: 2 + rng.IntN(3), Protocol: Protocol}}
		case k < 5:
			var items []Submit
			for range 1 + rng.IntN(4) {
				id := pick(ids) + fmt.Sprint(rng.IntN(4))
				s := Submit{ID: id, Type: pick([]string{"echo", "sleep"}), MaxAttempts: rng.IntN(3), Input: json.RawMessage(`{"n":1}`)}
				switch rng.IntN(6) {
				case 0:
					s.ConcurrencyKey, s.ConcurrencyLimit = pick([]string{"k1", "k2"}), 1+rng.IntN(2)
				case 1:
					s.ExecutionID = pick(ids) + "0"
				case 2:
					s.ParentID = pick(ids) + "1"
				case 3:
					s.Queue, s.Priority = "q", rng.IntN(3)
				}
				items = append(items, s)
			}
			body = &SubmitBatch{Items: items}
		case k < 9:
			body = randomAssigns(rng, ref.SchedulerView(), 4, nodes, bootOf)
		case k < 17:
			b := &ReportBatch{Items: carried}
			carried = nil
			for _, tk := range ref.List(Filter{}) {
				if !tk.State.Active() || rng.IntN(4) == 0 {
					continue
				}
				mk := func(kind ReportKind) Report {
					r := Report{TaskID: tk.ID, Attempt: tk.Attempt, Node: tk.Node, BootID: tk.BootID, Kind: kind}
					switch rng.IntN(12) {
					case 0:
						r.Attempt++
					case 1:
						r.BootID += "x"
					}
					switch kind {
					case ReportSucceeded:
						r.Result = json.RawMessage(`"ok"`)
					case ReportFailed:
						if rng.IntN(3) > 0 {
							r.Error = &TaskError{Type: "x", Message: "boom", Final: rng.IntN(4) == 0}
						}
						if rng.IntN(2) == 0 {
							nb := now.Add(time.Second)
							r.NotBefore = &nb
						}
					case ReportInterrupted:
						if rng.IntN(2) == 0 {
							r.Error = &TaskError{Type: "x", Message: "drained"}
						}
					case ReportCheckpoint:
						r.Checkpoint = json.RawMessage(`[1]`)
					}
					return r
				}
				end := ReportKind(2 + rng.IntN(5)) // checkpoint to interrupted
				if rng.IntN(12) == 0 {
					end = 9 // invalid
				}
				switch rng.IntN(6) {
				case 0: // one report alone
					b.Items = append(b.Items, mk(ReportKind(1+rng.IntN(6))))
				case 1: // started twice, then the end
					b.Items = append(b.Items, mk(ReportStarted), mk(ReportStarted), mk(end))
				case 2: // the end in the next report entry
					b.Items = append(b.Items, mk(ReportStarted))
					carried = append(carried, mk(end))
				case 3: // the pair twice
					b.Items = append(b.Items, mk(ReportStarted), mk(end), mk(ReportStarted), mk(end))
				default:
					b.Items = append(b.Items, mk(ReportStarted), mk(end))
				}
			}
			body = b
		case k == 17:
			body = &Cancel{IDs: []string{pick(ids) + "0", pick(ids) + "1", pick(ids) + "2"}}
		case k == 18:
			body = &Retry{IDs: []string{pick(ids) + "0", pick(ids) + "2"}, By: "bob"}
		default:
			body = &Down{Name: pick(nodes), Left: rng.IntN(2) == 0}
		}
		c := &Command{Now: now, Body: body}
		ref.ApplyCommand(uint64(i+1), c)
		cmds = append(cmds, c)
	}
	return cmds
}

// applyLogs applies logs in batches of sizes (the last repeated) with ApplyBatch, each report
// item alone when alone is set (as a replica without reportPair does).
func applyLogs(t *testing.T, logs []*raft.Log, alone bool, sizes ...int) (*FSM, applied) {
	t.Helper()
	f := New()
	f.reportsAlone = alone
	calls := recorder(f)
	var out applied
	for i := 0; len(logs) > 0; i++ {
		n := min(sizes[min(i, len(sizes)-1)], len(logs))
		out.results = append(out.results, f.ApplyBatch(logs[:n])...)
		logs = logs[n:]
	}
	return f, finish(t, f, out, calls)
}

// indexViews are the answers of every read an index serves: lists by each filter, counts,
// load, pending queues and the scheduler's view.
func indexViews(f *FSM) map[string]any {
	out := map[string]any{
		"all": f.List(Filter{}), "counts": f.Counts(), "load": f.Load(), "pending": f.PendingQueues(),
		"byType": f.PendingByType(), "view": f.SchedulerView(), "retry": f.NextRetry(t0),
	}
	for _, st := range []State{Pending, Scheduled, Assigned, Running, Waiting, Succeeded, Failed, Cancelled} {
		out["state "+string(st)] = f.List(Filter{State: st})
		for _, typ := range []string{"echo", "sleep"} {
			out["state type "+string(st)+typ] = f.List(Filter{State: st, Type: typ})
		}
	}
	for _, typ := range []string{"echo", "sleep"} {
		out["type "+typ] = f.List(Filter{Type: typ})
	}
	for _, n := range []string{"n1", "n2", "n3"} {
		out["node "+n] = f.List(Filter{Node: n})
		out["active "+n] = f.Active(n)
	}
	for _, id := range []string{"a0", "b0", "c0", "d0", "e0", "f0"} {
		out["exec "+id] = f.List(Filter{ExecutionID: id})
	}
	for _, k := range []string{"k1", "k2"} {
		out["key "+k] = f.ConcurrencyActive(k)
	}
	return out
}

// A start and its end applied together leave what applying each alone leaves, as replicas
// without reportPair do: results, transitions, index, digest, snapshot, and every read the
// indexes serve, which also match the indexes a restore rebuilds from the records.
func TestReportPairsMatchApplyingEachReportAlone(t *testing.T) {
	runs := 200
	if testing.Short() {
		runs = 40
	}
	pairs := 0
	for run := range runs {
		rng := rand.New(rand.NewPCG(uint64(run), 22))
		cmds := pairCommands(t, rng, 30+rng.IntN(90))
		for _, c := range cmds {
			if b, ok := c.Body.(*ReportBatch); ok {
				for i := 0; i+1 < len(b.Items); i++ {
					if startAndEnd(&b.Items[i], &b.Items[i+1]) {
						pairs++
					}
				}
			}
		}
		logs := encodeLogs(t, cmds, nil)
		sizes := []int{1 + rng.IntN(8), 1 + rng.IntN(32)}
		alone, want := applyLogs(t, logs, true, 1)
		paired, got := applyLogs(t, logs, false, sizes...)
		if d := got.differs(want); d != "" {
			t.Fatalf("run %d: %s", run, d)
		}
		wantViews, gotViews := indexViews(alone), indexViews(paired)
		rebuilt := indexViews(restoredCopy(t, paired))
		for k, w := range wantViews {
			if !reflect.DeepEqual(gotViews[k], w) {
				t.Fatalf("run %d: %s is %+v\nwant %+v", run, k, gotViews[k], w)
			}
			if !reflect.DeepEqual(rebuilt[k], w) {
				t.Fatalf("run %d: %s after a restore is %+v\nwant %+v", run, k, rebuilt[k], w)
			}
		}
	}
	if pairs < runs*5 {
		t.Fatalf("only %d pairs over %d runs: the generator does not exercise reportPair", pairs, runs)
	}
}

// A start whose end comes in the next entry, or the next batch of entries, applies as two
// reports: the task runs in between and ends with the second.
func TestReportPairSplitAcrossEntries(t *testing.T) {
	for _, sameBatch := range []bool{true, false} {
		t.Run(fmt.Sprintf("same batch %v", sameBatch), func(t *testing.T) {
			h := assigned(t)
			tk := h.task("a")
			start := rep("a", tk.Attempt, tk.Node, tk.BootID, ReportStarted)
			end := rep("a", tk.Attempt, tk.Node, tk.BootID, ReportSucceeded)
			end.Result = json.RawMessage(`1`)
			base := h.f.Index()
			startCmd, endCmd := reportCmd(start), reportCmd(end)
			startCmd.Now, endCmd.Now = t0.Add(time.Hour), t0.Add(time.Hour+time.Second)
			logs := []*raft.Log{raftLog(t, base+1, startCmd), raftLog(t, base+2, endCmd)}
			var rs []any
			if sameBatch {
				rs = h.f.ApplyBatch(logs)
			} else {
				rs = h.f.ApplyBatch(logs[:1])
				if got := h.task("a"); got.State != Running || got.ModifyIndex != base+1 {
					t.Fatalf("after the start: %s at %d, want running at %d", got.State, got.ModifyIndex, base+1)
				}
				rs = append(rs, h.f.ApplyBatch(logs[1:])...)
			}
			for _, r := range rs {
				if res := r.(*Result); res.Err != nil || res.Items[0].Err != nil {
					t.Fatalf("result %+v", res)
				}
			}
			got := h.task("a")
			if got.State != Succeeded || got.ModifyIndex != base+2 || string(got.Result) != "1" {
				t.Fatalf("task %s at %d result %s, want succeeded at %d", got.State, got.ModifyIndex, got.Result, base+2)
			}
			if ev := events(got); !slices.Equal(ev[len(ev)-3:], []string{EventAssigned, EventStarted, EventSucceeded}) {
				t.Fatalf("history %v", ev)
			}
			if !got.StartedAt.Before(*got.FinishedAt) {
				t.Fatalf("started %v, finished %v: the start's time is its own entry's", got.StartedAt, got.FinishedAt)
			}
		})
	}
}

// A start and its end in one entry wake those who watch the task, its old state's list, the
// running list it passed through, and its new state's list, as two applies would.
func TestReportPairWakesEveryListItPassed(t *testing.T) {
	h := assigned(t)
	tk := h.task("a")
	var watches []<-chan struct{}
	for _, st := range []State{Assigned, Running, Succeeded} {
		p, err := h.f.ListPage(Filter{State: st, Watch: true})
		if err != nil {
			t.Fatal(err)
		}
		watches = append(watches, p.Watch)
	}
	_, _, taskWatch := h.f.TaskWatch("a")
	p, err := h.f.ListPage(Filter{State: Pending, Watch: true})
	if err != nil {
		t.Fatal(err)
	}
	h.must(reportCmd(rep("a", tk.Attempt, tk.Node, tk.BootID, ReportStarted), rep("a", tk.Attempt, tk.Node, tk.BootID, ReportSucceeded)))
	for i, w := range append(watches, taskWatch) {
		if !closed(w) {
			t.Errorf("watch %d not woken", i)
		}
	}
	if closed(p.Watch) {
		t.Error("the pending list's watch woke, though no pending task changed")
	}
}

// BenchmarkReportPair applies entries of lifeBatch tasks' started and succeeded reports together,
// paired and each alone (the path replicas without reportPair take), per task.
func BenchmarkReportPair(b *testing.B) {
	for _, alone := range []bool{false, true} {
		b.Run(map[bool]string{false: "paired", true: "alone"}[alone], func(b *testing.B) {
			f := lifeFSM(b)
			f.reportsAlone = alone
			idx := uint64(4)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				cmds := lifeCommands(i*lifeBatch, lifeBatch, lifeT0.Add(time.Duration(i)*time.Second))
				checkLife(b, []any{f.ApplyCommand(idx, cmds[0]), f.ApplyCommand(idx+1, cmds[1])})
				b.StartTimer()
				checkLife(b, []any{f.ApplyCommand(idx+2, cmds[2])})
				idx += 3
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*lifeBatch), "ns/task")
		})
	}
}

// Watches of one kind on different keys wake each for its own key, before and after a restore
// woke every watch at once: what watches count per kind to skip unwatched kinds stays true.
func TestWatchesOfOneKindWakeIndependently(t *testing.T) {
	h := assigned(t)
	h.must(registerCmd("n2", "b2", 4))
	h.must(submitCmd(sub("b", "echo")))
	h.must(assignCmd("b", "n2", "b2"))
	watch := func(q Filter) <-chan struct{} {
		t.Helper()
		q.Watch = true
		p, err := h.f.ListPage(q)
		if err != nil {
			t.Fatal(err)
		}
		return p.Watch
	}
	id := "a"
	for round := range 2 {
		tk := h.task(id)
		running, succeeded, node := watch(Filter{State: Running}), watch(Filter{State: Succeeded}), watch(Filter{Node: "n1"})
		other := watch(Filter{Node: "n2"})
		h.must(reportCmd(rep(id, tk.Attempt, tk.Node, tk.BootID, ReportStarted)))
		if !closed(running) || !closed(node) || closed(succeeded) || closed(other) {
			t.Fatalf("round %d, after the start: running %v node %v succeeded %v other node %v", round,
				closed(running), closed(node), closed(succeeded), closed(other))
		}
		h.must(reportCmd(rep(id, tk.Attempt, tk.Node, tk.BootID, ReportSucceeded)))
		if !closed(succeeded) || closed(other) {
			t.Fatalf("round %d, after the end: succeeded %v other node %v", round, closed(succeeded), closed(other))
		}
		if round == 0 {
			if err := h.f.Restore(io.NopCloser(bytes.NewReader(snapshotBytes(t, h.f)))); err != nil {
				t.Fatal(err)
			}
			if !closed(other) {
				t.Fatal("a restore did not wake every watch")
			}
			id = "c"
			h.must(submitCmd(sub(id, "echo")))
			h.must(assignCmd(id, "n1", "b1"))
		}
	}
}
