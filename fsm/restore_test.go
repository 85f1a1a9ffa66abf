package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// restoreTasks is a task array that exercises the restore pipeline: more chunks than the
// decoders' recycled buffers (so a record that kept a reference into one would be overwritten),
// records of every shape, one longer than the reader's buffer, and an ID that appears twice.
func restoreTasks() []Task {
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	ptr := func(d time.Duration) *time.Time { v := at.Add(d); return &v }
	var tasks []Task
	for i := range 12*restoreChunk + 7 {
		t := Task{
			ID: fmt.Sprintf("t%05d", i), Type: []string{"echo", "calc-square", "fail"}[i%3], Version: "1",
			Input: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), State: Succeeded, Node: fmt.Sprintf("n%d", i%3+1),
			BootID: "boot", Attempt: 1, MaxAttempts: 3, Timeout: Duration(time.Minute), ExecutionID: fmt.Sprintf("t%05d", i),
			CreatedAt: at.Add(time.Duration(i) * time.Millisecond), CreateIndex: uint64(i + 1), ModifyIndex: uint64(i + 2),
			History: []HistoryEntry{{Attempt: 0, Event: "submitted", At: at}, {Attempt: 1, Node: "n1", Event: "assigned", At: at}},
		}
		switch i % 5 {
		case 0:
			t.Result = json.RawMessage(fmt.Sprintf("%d", i*i))
			t.StartedAt, t.FinishedAt = ptr(time.Second), ptr(2*time.Second)
		case 1:
			t.State, t.Error = Failed, &TaskError{Type: "boom", Message: strings.Repeat("x", i%97), Final: true}
			t.FinishedAt = ptr(3 * time.Second)
			t.History = append(t.History, HistoryEntry{Attempt: 1, Node: "n1", Event: "failed", At: at, Error: "boom", Final: true})
		case 2:
			t.State, t.Node, t.History = Pending, "", nil
			t.NotBefore, t.Priority, t.Queue = ptr(time.Hour), -2, "q1"
		case 3:
			t.State, t.RunAt, t.History = Scheduled, ptr(time.Minute), []HistoryEntry{}
			t.UniqueKey, t.UniqueUntil, t.SubmittedBy = "u", ptr(time.Hour), "alice"
		case 4:
			t.State, t.Checkpoint, t.ParentID, t.ExecutionID = Running, json.RawMessage(`[1,2]`), "t00000", "t00000"
		}
		tasks = append(tasks, t)
	}
	big := tasks[100]
	big.Input = json.RawMessage(`"` + strings.Repeat("b", 3*restoreBuffer) + `"`)
	tasks[100] = big
	again := tasks[5]
	again.Result = json.RawMessage(`"the later record"`)
	tasks = append(tasks, again)
	return tasks
}

func restoreSnapshotBytes(t *testing.T, tasks []Task) []byte {
	t.Helper()
	b, err := msgpack.Marshal(map[string]any{"index": uint64(99), "tasks": tasks, "nodes": []Node{}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The pipelined restore (framing, decoders, ordered inserts) builds the same records a plain
// sequential msgpack decode of the snapshot does, the later of two records of an ID winning.
func TestRestorePipelineRebuildsEveryRecord(t *testing.T) {
	data := restoreSnapshotBytes(t, restoreTasks())
	var plain struct {
		Tasks []Task `msgpack:"tasks"`
	}
	if err := msgpack.Unmarshal(data, &plain); err != nil {
		t.Fatal(err)
	}
	want := map[string]Task{}
	for _, task := range plain.Tasks {
		want[task.ID] = task
	}
	f := New()
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
		t.Fatal(err)
	}
	if f.Index() != 99 {
		t.Errorf("index = %d, want 99", f.Index())
	}
	if got := len(f.List(Filter{})); got != len(want) {
		t.Fatalf("%d tasks restored, want %d", got, len(want))
	}
	for id, w := range want {
		got, ok := f.Task(id)
		if !ok {
			t.Fatalf("%s missing after restore", id)
		}
		if w = w.clone(); !reflect.DeepEqual(got, w) { // Task returns a clone
			t.Fatalf("%s restored as\n%+v\nwant\n%+v", id, got, w)
		}
	}
	if got, _ := f.Task("t00005"); string(got.Result) != `"the later record"` {
		t.Errorf("t00005 result = %s, want the later record's", got.Result)
	}
}

// A snapshot cut short or damaged anywhere fails the restore with an error, never a hang or a
// panic, and leaves the state as it was.
func TestRestoreOfADamagedSnapshotFailsCleanly(t *testing.T) {
	data := restoreSnapshotBytes(t, restoreTasks())
	var cuts []int
	for i := 1; i < 40; i++ {
		cuts = append(cuts, len(data)*i/40)
	}
	cuts = append(cuts, len(data)-1, 20, 3)
	for _, cut := range cuts {
		f := New()
		f.ApplyCommand(1, submitCmd(sub("kept", "echo")))
		if err := f.Restore(io.NopCloser(bytes.NewReader(data[:cut]))); err == nil {
			t.Fatalf("restore of the first %d of %d bytes succeeded", cut, len(data))
		}
		if _, ok := f.Task("kept"); !ok || f.Index() != 1 {
			t.Fatalf("a failed restore (cut at %d) changed the state", cut)
		}
	}
	for _, at := range []int{len(data) / 3, len(data) / 2, len(data) * 9 / 10} {
		bad := bytes.Clone(data)
		bad[at] = 0xc1 // the one type byte msgpack never uses
		f := New()
		f.ApplyCommand(1, submitCmd(sub("kept", "echo")))
		if err := f.Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
			// The byte may have landed inside a string or a binary: then the snapshot is still
			// well formed, and must have restored every record.
			if len(f.List(Filter{})) != len(restoreTasks())-1 {
				t.Fatalf("damage at byte %d: restore succeeded with %d tasks", at, len(f.List(Filter{})))
			}
			continue
		}
		if _, ok := f.Task("kept"); !ok {
			t.Fatalf("a failed restore (damage at %d) changed the state", at)
		}
	}
}

// decodeHistory decodes exactly what msgpack's own slice decoder does.
func TestHistoryDecoderMatchesMsgpack(t *testing.T) {
	type plainHistory []HistoryEntry // not registered: msgpack's reflection decoder
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, h := range [][]HistoryEntry{nil, {}, {{Attempt: 1, Node: "n1", Event: "assigned", At: at}},
		make([]HistoryEntry, 100)} {
		b, err := msgpack.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		var got []HistoryEntry
		var want plainHistory
		if err := msgpack.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if err := msgpack.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, []HistoryEntry(want)) || (got == nil) != (want == nil) {
			t.Errorf("decoded %#v, msgpack decodes %#v", got, want)
		}
	}
	// A length the bytes cannot hold is an error, not an allocation of that length.
	if err := msgpack.Unmarshal([]byte{0xdd, 0x7f, 0xff, 0xff, 0xff}, new([]HistoryEntry)); err == nil {
		t.Error("a history declaring 2^31 entries in 5 bytes decoded")
	}
}
