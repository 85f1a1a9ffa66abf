package scheduler

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

// backlogFSM holds pending echo tasks and three nodes of capacity 8 with 20 tasks running, so a
// pass has 4 free slots to fill, as under a burst.
func backlogFSM(b *testing.B, pending int) (*fsm.FSM, map[string]bool) {
	b.Helper()
	return queuedFSM(b, pending, 1, 1) // one FIFO queue, one priority
}

// BenchmarkSchedulerPass is one placement pass (view and Place) at a growing backlog: the cost
// must stay flat, since a pass reads only what the free slots can take.
func BenchmarkSchedulerPass(b *testing.B) {
	for _, pending := range []int{0, 10_000, 100_000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			f, alive := backlogFSM(b, pending)
			now := now0.Add(time.Second)
			b.ReportAllocs()
			for b.Loop() {
				v := f.PlacementView(alive, now)
				as := Place(v, alive, now, "")
				_ = NextWake(v, now)
				if pending > 0 && len(as) != 4 {
					b.Fatalf("placed %d, want the 4 free slots", len(as))
				}
			}
		})
	}
}

// BenchmarkSchedulerPassFullCopy is the pass as it was before the indexed store (a copy of every
// pending task per pass), for comparison.
func BenchmarkSchedulerPassFullCopy(b *testing.B) {
	for _, pending := range []int{0, 10_000, 100_000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			f, alive := backlogFSM(b, pending)
			now := now0.Add(time.Second)
			b.ReportAllocs()
			for b.Loop() {
				v := f.SchedulerView()
				Place(v, alive, now, "")
				_ = NextWake(v, now)
			}
		})
	}
}

// queuedFSM is backlogFSM with its backlog spread over queues and priorities: task i goes to
// queue i%queues with priority (i/queues)%prios - prios/2, so every queue has every band.
func queuedFSM(b *testing.B, pending, queues, prios int) (*fsm.FSM, map[string]bool) {
	b.Helper()
	return shapedFSM(b, pending, func(i int, s *fsm.Submit) {
		if queues > 1 {
			s.Queue = fmt.Sprintf("q%d", i%queues)
		}
		if prios > 1 {
			s.Priority = (i/queues)%prios - prios/2
		}
	})
}

// threeNodeFSM is an FSM with three up nodes of capacity 8 offering echo version 1, how to
// apply a command to it at now0 (failing the benchmark on any error), and the nodes as alive.
func threeNodeFSM(b *testing.B) (*fsm.FSM, func(fsm.Payload), map[string]bool) {
	b.Helper()
	f := fsm.New()
	idx := uint64(0)
	apply := func(body fsm.Payload) {
		idx++
		r := f.ApplyCommand(idx, &fsm.Command{Now: now0, Body: body})
		if r.Err != nil {
			b.Fatal(r.Err)
		}
		for _, it := range r.Items {
			if it.Err != nil {
				b.Fatal(it.Err)
			}
		}
	}
	alive := map[string]bool{}
	for _, name := range []string{"n1", "n2", "n3"} {
		apply(&fsm.Register{Node: fsm.Node{Name: name, BootID: "boot-" + name, Capacity: 8, Types: []fsm.TypeInfo{{Type: "echo", Version: "1"}}}})
		alive[name] = true
	}
	return f, apply, alive
}

// shapedFSM holds pending+20 echo tasks, task i shaped by shape, and three nodes of capacity 8
// running the first 20, so a pass has 4 free slots to fill.
func shapedFSM(b *testing.B, pending int, shape func(i int, s *fsm.Submit)) (*fsm.FSM, map[string]bool) {
	b.Helper()
	f, apply, alive := threeNodeFSM(b)
	total := pending + 20
	for done := 0; done < total; done += 1000 {
		var subs []fsm.Submit
		for i := done; i < min(done+1000, total); i++ {
			s := fsm.Submit{ID: fmt.Sprintf("01JBENCH%018d", i), Type: "echo", Input: json.RawMessage(`"hello"`), MaxAttempts: 3}
			shape(i, &s)
			subs = append(subs, s)
		}
		apply(&fsm.SubmitBatch{Items: subs})
	}
	var as []fsm.Assign
	for i := range 20 {
		n := []string{"n1", "n2", "n3"}[i%3]
		as = append(as, fsm.Assign{TaskID: fmt.Sprintf("01JBENCH%018d", i), Node: n, BootID: "boot-" + n})
	}
	apply(&fsm.AssignBatch{Items: as})
	return f, alive
}

// BenchmarkQueuesAndPriorities is one placement pass over a backlog of 100,000 tasks: in one
// FIFO queue, and in 10 queues with 5 priorities each (50 bands, ageing on). A pass fills the 4
// free slots; placed/op is per placed task. Both must be of the same order (BENCHMARKS.md).
func BenchmarkQueuesAndPriorities(b *testing.B) {
	for _, c := range []struct {
		name          string
		queues, prios int
	}{{"fifo", 1, 1}, {"10queues-5priorities", 10, 5}} {
		b.Run(c.name, func(b *testing.B) {
			f, alive := queuedFSM(b, 100_000, c.queues, c.prios)
			now := now0.Add(time.Minute) // every task has aged: ageing is computed, not skipped
			b.ReportAllocs()
			placed := 0
			for b.Loop() {
				v := f.PlacementView(alive, now)
				as := Place(v, alive, now, "")
				_ = NextWake(v, now)
				if len(as) != 4 {
					b.Fatalf("placed %d, want the 4 free slots", len(as))
				}
				placed += len(as)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(placed), "ns/placed")
		})
	}
}

// keyedFSM is backlogFSM with a concurrency key of limit 1 on every task, task i of key i%keys
// (keys >= 20): the 20 running tasks hold keys 0..19 full, so a pass skips their backlogs and
// fills the 4 free slots with tasks of other keys, taking turns.
func keyedFSM(b *testing.B, pending, keys int) (*fsm.FSM, map[string]bool) {
	b.Helper()
	return shapedFSM(b, pending, func(i int, s *fsm.Submit) {
		s.ConcurrencyKey, s.ConcurrencyLimit = fmt.Sprintf("tenant-%d", i%keys), 1
	})
}

// BenchmarkConcurrencyKeys is one placement pass over 100,000 keyed tasks (limit 1 per key, 20
// keys full) spread over 20 keys (every key full: nothing to place), 1,000 keys and 100,000 keys
// (one task each). The cost must stay of the order of the unkeyed pass
// (BenchmarkQueuesAndPriorities), whatever the backlog and the number of keys.
func BenchmarkConcurrencyKeys(b *testing.B) {
	for _, keys := range []int{20, 1000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", keys), func(b *testing.B) {
			f, alive := keyedFSM(b, 100_000, keys)
			now := now0.Add(time.Minute)
			want := 4
			if keys == 20 {
				want = 0 // every key holds its limit: the whole backlog waits
			}
			b.ReportAllocs()
			for b.Loop() {
				v := f.PlacementView(alive, now)
				as := Place(v, alive, now, "")
				_ = NextWake(v, now)
				if len(as) != want {
					b.Fatalf("placed %d, want %d", len(as), want)
				}
			}
		})
	}
}

// BenchmarkRateLimitedBacklog is one placement pass while a backlog of tasks waits for an empty
// rate bucket (1/h, its one token taken) beside 100 tasks under no limit: the pass places 3 of
// those in the free slots and reads none of the backlog, so its cost stays flat as it grows.
func BenchmarkRateLimitedBacklog(b *testing.B) {
	for _, pending := range []int{0, 10_000, 100_000} {
		b.Run(fmt.Sprintf("limited=%d", pending), func(b *testing.B) {
			f, apply, alive := threeNodeFSM(b)
			apply(&fsm.RateLimitSet{Name: "slow", Count: 1, Period: fsm.Duration(time.Hour), Burst: 1})
			total := pending + 21 + 100
			for done := 0; done < total; done += 1000 {
				var subs []fsm.Submit
				for i := done; i < min(done+1000, total); i++ {
					s := fsm.Submit{ID: fmt.Sprintf("01JBENCH%018d", i), Type: "echo", Input: json.RawMessage(`"hello"`), MaxAttempts: 3}
					if i == 20 || i >= 121 {
						s.RateLimit = "slow"
					}
					subs = append(subs, s)
				}
				apply(&fsm.SubmitBatch{Items: subs})
			}
			var as []fsm.Assign
			for i := range 21 { // 20 under no limit and the bucket's one token: 3 slots stay free
				n := []string{"n1", "n2", "n3"}[i%3]
				as = append(as, fsm.Assign{TaskID: fmt.Sprintf("01JBENCH%018d", i), Node: n, BootID: "boot-" + n})
			}
			apply(&fsm.AssignBatch{Items: as})
			now := now0.Add(time.Second)
			b.ReportAllocs()
			for b.Loop() {
				v := f.PlacementView(alive, now)
				as := Place(v, alive, now, "")
				if len(as) != 3 || NextWake(v, now).IsZero() != (pending == 0) {
					b.Fatalf("placed %d (want the 3 free slots), next wake %v", len(as), NextWake(v, now))
				}
			}
		})
	}
}
