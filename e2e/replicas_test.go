package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/taskworker/taskworker/internal/localcluster"
)

// replicaRecord is the part of a task record every replica must agree on once the cluster is
// quiet: the FSM fields that change with each command. (The in-process tests compare whole FSMs
// with fsm.Digest; a process's FSM is reachable only through the public API.)
type replicaRecord struct {
	ID      string          `json:"id"`
	State   string          `json:"state"`
	Attempt int             `json:"attempt"`
	Result  json.RawMessage `json:"result"`
	History json.RawMessage `json:"history"`
}

func (r replicaRecord) String() string {
	var res, hist bytes.Buffer
	_ = json.Compact(&res, r.Result)
	_ = json.Compact(&hist, r.History)
	return fmt.Sprintf("%s attempt %d result %s history %s", r.State, r.Attempt, res.String(), hist.String())
}

// replicaView reads every task of p as id -> record text, with credential ("" for none).
func (p *proc) replicaView(credential string) (map[string]string, error) {
	var recs []replicaRecord
	if err := p.getJSONAs(credential, "/v1/tasks?limit=10000", &recs); err != nil {
		return nil, err
	}
	out := make(map[string]string, len(recs))
	for _, r := range recs {
		out[r.ID] = r.String()
	}
	return out, nil
}

// checkReplicas fails the test unless every node still running returns the same task records
// (id, state, attempt, result, history) within a generous deadline, as hashicorp/raft's fuzzy
// tests compare every FSM at the end (VerifyFSM). It is a t.Cleanup of every procCluster, and
// skipped when the test has already failed.
func (pc *procCluster) checkReplicas() {
	if pc.t.Failed() {
		return
	}
	live := pc.running()
	if len(live) < 2 {
		return
	}
	var diff string
	err := localcluster.Until(30*time.Second, 200*time.Millisecond, func() bool {
		diff = replicaDiff(live, pc.token)
		return diff == ""
	})
	if err != nil {
		pc.t.Errorf("replicas disagree on the task records 30s after the test:\n%s", diff)
	}
}

// replicaDiff compares every node's records, read with credential, with the first node's; ""
// when all agree.
func replicaDiff(live []*proc, credential string) string {
	views := make([]map[string]string, len(live))
	var b strings.Builder
	for i, p := range live {
		v, err := p.replicaView(credential)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", p.Name, err)
			continue
		}
		views[i] = v
	}
	if b.Len() > 0 {
		return b.String()
	}
	names := make([]string, len(live))
	for i, p := range live {
		names[i] = p.Name
	}
	return diffViews(names, views)
}

// diffViews compares every view with the first one; "" when all agree.
func diffViews(names []string, views []map[string]string) string {
	var b strings.Builder
	for i := 1; i < len(views); i++ {
		ids := map[string]bool{}
		for id := range views[0] {
			ids[id] = true
		}
		for id := range views[i] {
			ids[id] = true
		}
		sorted := make([]string, 0, len(ids))
		for id := range ids {
			sorted = append(sorted, id)
		}
		sort.Strings(sorted)
		for _, id := range sorted {
			a, aok := views[0][id]
			c, cok := views[i][id]
			switch {
			case !aok:
				fmt.Fprintf(&b, "task %s: missing on %s, on %s: %s\n", id, names[0], names[i], c)
			case !cok:
				fmt.Fprintf(&b, "task %s: missing on %s, on %s: %s\n", id, names[i], names[0], a)
			case a != c:
				fmt.Fprintf(&b, "task %s:\n  %s: %s\n  %s: %s\n", id, names[0], a, names[i], c)
			}
		}
	}
	return b.String()
}

func TestDiffViewsNamesTheNodeAndTask(t *testing.T) {
	a := map[string]string{"t1": "succeeded attempt 1", "t2": "running attempt 1"}
	tests := []struct {
		name  string
		views []map[string]string
		want  []string // substrings of the diff; none: no diff
	}{
		{"same", []map[string]string{a, {"t1": "succeeded attempt 1", "t2": "running attempt 1"}, a}, nil},
		{"state differs", []map[string]string{a, {"t1": "succeeded attempt 1", "t2": "succeeded attempt 1"}, a},
			[]string{"task t2:", "n1: running attempt 1", "n2: succeeded attempt 1"}},
		{"missing on the second", []map[string]string{a, a, {"t1": "succeeded attempt 1"}}, []string{"task t2: missing on n3"}},
		{"missing on the first", []map[string]string{a, {"t1": "succeeded attempt 1", "t2": "running attempt 1", "t3": "pending attempt 0"}, a},
			[]string{"task t3: missing on n1, on n2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := diffViews([]string{"n1", "n2", "n3"}, tt.views)
			if (got == "") != (len(tt.want) == 0) {
				t.Fatalf("diff %q, want one with %q", got, tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("diff %q lacks %q", got, w)
				}
			}
		})
	}
}
