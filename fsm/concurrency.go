package fsm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/google/btree"
)

// Concurrency keys: at most ConcurrencyLimit tasks with one ConcurrencyKey are assigned or running
// at once, cluster-wide, whatever their queue or type. A submit names the key and limit, or its
// queue makes them from the task's input (QueueConfig.ConcurrencyKey, a template). Placement
// respects the limit and Apply checks it again (assign), as it does queue limits, so a placement
// from a stale view never passes it.
//
// Fairness: within a priority band of a queue, keyed tasks take turns by key. Each keyed task
// gets a place in the rotation (Task.FairSeq) when it becomes pending: one after its key's last
// pending task, and never before the band's head, so a key new to the band joins the rotation
// where it is now instead of going behind a long backlog of another key, or ahead of all of it.
// Placement reads the band in (FairSeq, ready time) order, so keys alternate. Ageing ranks the band
// against the others (by the effective priority of its next task), not the tasks inside it. Tasks
// without a key keep their FIFO band (store.queue), merged with the keyed one by effective priority
// and ready time, as bands are.

// ConcurrencyProtocol is the protocol from which submits carry a concurrency key and queues a key
// template (Submit.ConcurrencyKey, QueueSet.ConcurrencyKey).
const ConcurrencyProtocol = 8

// Bounds of concurrency keys.
const (
	// MaxConcurrencyLimit bounds a key's limit: 1..MaxConcurrencyLimit.
	MaxConcurrencyLimit = 100_000
	// MaxConcurrencyKey bounds a key's length in bytes; a key a template makes longer is cut.
	MaxConcurrencyKey = 128
	// MaxKeyTemplate bounds a queue's key template in bytes.
	MaxKeyTemplate = 256
	// MaxKeyPlaceholders bounds a template's placeholders: each reads the task's input again in
	// Apply, so a template cannot make one submit cost many passes over a large input.
	MaxKeyPlaceholders = 8
)

// ParseKeyTemplate checks a key template: text with placeholders {/json/pointer}, each replaced
// by the part of the task's input the pointer (RFC 6901) names. Braces only open and close
// placeholders; a placeholder holds a pointer, which starts with '/'; at most MaxKeyPlaceholders.
func ParseKeyTemplate(tmpl string) error {
	_, err := keyTemplateParts(tmpl)
	return err
}

// keyTemplateParts splits a template into literal text (even indexes) and pointers (odd).
func keyTemplateParts(tmpl string) ([]string, error) {
	if len(tmpl) > MaxKeyTemplate {
		return nil, fmt.Errorf("a key template has at most %d bytes, got %d", MaxKeyTemplate, len(tmpl))
	}
	var parts []string
	rest := tmpl
	for {
		open := strings.IndexByte(rest, '{')
		if c := strings.IndexByte(rest, '}'); c >= 0 && (open < 0 || c < open) {
			return nil, fmt.Errorf("key template %q: '}' without '{'", tmpl)
		}
		if open < 0 {
			return append(parts, rest), nil
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("key template %q: '{' without '}'", tmpl)
		}
		ptr := rest[open+1 : open+end]
		if !strings.HasPrefix(ptr, "/") || strings.ContainsRune(ptr, '{') {
			return nil, fmt.Errorf("key template %q: a placeholder holds a JSON pointer such as {/tenant}, got {%s}", tmpl, ptr)
		}
		if len(parts)/2 >= MaxKeyPlaceholders {
			return nil, fmt.Errorf("key template %q: at most %d placeholders", tmpl, MaxKeyPlaceholders)
		}
		parts = append(parts, rest[:open], ptr)
		rest = rest[open+end+1:]
	}
}

// ExpandKeyTemplate makes a task's key from a template and its input. A pointer to a string gives
// the string, to null or to nothing the empty string, to anything else its JSON text (compact).
// The key is cut at MaxConcurrencyKey bytes. It is deterministic: Apply calls it.
func ExpandKeyTemplate(tmpl string, input json.RawMessage) (string, error) {
	parts, err := keyTemplateParts(tmpl)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for i, p := range parts {
		if i%2 == 0 {
			b.WriteString(p)
			continue
		}
		v, err := Pointer(input, p)
		if err != nil || len(v) == 0 || string(v) == "null" {
			continue
		}
		if v[0] == '"' {
			var s string
			if json.Unmarshal(v, &s) == nil {
				b.WriteString(s)
				continue
			}
		}
		var c bytes.Buffer
		if json.Compact(&c, v) == nil {
			b.Write(c.Bytes())
		}
	}
	key := b.String()
	if len(key) > MaxConcurrencyKey {
		key = key[:MaxConcurrencyKey]
	}
	return key, nil
}

// keyOf fills t's concurrency key and limit from its queue's template when the submit named no
// key. f.mu is held.
func (f *FSM) keyOf(t *Task) {
	if t.ConcurrencyKey != "" {
		return
	}
	c := f.queues.Queues[t.Queue]
	if c.ConcurrencyKey == "" || c.ConcurrencyLimit <= 0 {
		return
	}
	if key, err := ExpandKeyTemplate(c.ConcurrencyKey, t.Input); err == nil {
		t.ConcurrencyKey, t.ConcurrencyLimit = key, c.ConcurrencyLimit
	}
}

// keyRoom is how many more tasks with t's key may start now, counting taken more (MaxInt without
// a key).
func (s *store) keyRoom(t *Task, taken int) int {
	if t.ConcurrencyKey == "" {
		return room(0, 0)
	}
	return max(t.ConcurrencyLimit-s.activeKey[t.ConcurrencyKey]-taken, 0)
}

// ConcurrencyActive is how many tasks with the key are assigned or running.
func (f *FSM) ConcurrencyActive(key string) int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.tasks.activeKey[key]
}

// fairBand holds the keyed pending tasks of one priority band of one QueueKey: all of them by
// key and then in placement order (tasks), and each key's first task (heads), in placement order.
// One tree for every key rather than a tree per key: a band of 100,000 keys of a task each costs
// one entry per task, not a tree per key.
type fairBand struct {
	heads *btree.BTreeG[*Task]
	tasks *btree.BTreeG[*Task]
}

// byFair orders keyed tasks of a band: place in the rotation, then ready first, then created first.
func byFair(a, b *Task) bool {
	if a.FairSeq != b.FairSeq {
		return a.FairSeq < b.FairSeq
	}
	return byReady(a, b)
}

// byKeyFair orders a band's keyed tasks by key, then as byFair.
func byKeyFair(a, b *Task) bool {
	if a.ConcurrencyKey != b.ConcurrencyKey {
		return a.ConcurrencyKey < b.ConcurrencyKey
	}
	return byFair(a, b)
}

// inFair reports whether t is held in a fair band: keyed, pending, and not waiting out a retry.
func inFair(t *Task) bool {
	return t.State == Pending && t.NotBefore == nil && t.ConcurrencyKey != ""
}

// fairKey names the fair bands t is held in: its queue, type, version and rate bucket.
func fairKey(t *Task) QueueKey {
	return QueueKey{t.Queue, t.Type, t.Version, RateBucket{t.RateLimit, t.RateKey}}
}

// fairBandOf is t's band, nil when none holds any task.
func (s *store) fairBandOf(t *Task) *fairBand {
	return s.fair[fairKey(t)][t.Priority]
}

// firstOf is the first task of key in fb, nil when it has none.
func (fb *fairBand) firstOf(key string) *Task {
	var first *Task
	fb.tasks.AscendGreaterOrEqual(&Task{ConcurrencyKey: key}, func(t *Task) bool {
		if t.ConcurrencyKey == key {
			first = t
		}
		return false
	})
	return first
}

// lastOf is the last task of key in fb, nil when it has none.
func (fb *fairBand) lastOf(key string) *Task {
	var last *Task
	fb.tasks.DescendLessOrEqual(&Task{ConcurrencyKey: key, FairSeq: math.MaxUint64}, func(t *Task) bool {
		if t.ConcurrencyKey == key {
			last = t
		}
		return false
	})
	return last
}

// nextOf is the task after t of t's key in fb that is not cancel-requested, nil at the key's end.
func (fb *fairBand) nextOf(t *Task) *Task {
	var next *Task
	fb.tasks.AscendGreaterOrEqual(t, func(o *Task) bool {
		if o.ConcurrencyKey != t.ConcurrencyKey {
			return false
		}
		if o == t || o.CancelRequested {
			return true
		}
		next = o
		return false
	})
	return next
}

// fairSeq is the place in its band's rotation of a keyed task that becomes pending: after its key's
// last pending task and at the band's head at the earliest. f.mu is held; t is not stored.
func (s *store) fairSeq(t *Task) uint64 {
	seq := uint64(1)
	fb := s.fairBandOf(t)
	if fb == nil {
		return seq
	}
	if h, ok := fb.heads.Min(); ok {
		seq = h.FairSeq
	}
	if last := fb.lastOf(t.ConcurrencyKey); last != nil {
		seq = max(seq, last.FairSeq+1)
	}
	return seq
}

func (s *store) insertFair(t *Task) {
	k := fairKey(t)
	m := s.fair[k]
	if m == nil {
		m = map[int]*fairBand{}
		s.fair[k] = m
	}
	fb := m[t.Priority]
	if fb == nil {
		fb = &fairBand{heads: btree.NewWithFreeListG(btreeDegree, byFair, freeNodes),
			tasks: btree.NewWithFreeListG(btreeDegree, byKeyFair, freeNodes)}
		m[t.Priority] = fb
	}
	old := fb.firstOf(t.ConcurrencyKey)
	fb.tasks.ReplaceOrInsert(t)
	if old == nil || byFair(t, old) { // t is its key's new head
		if old != nil {
			fb.heads.Delete(old)
		}
		fb.heads.ReplaceOrInsert(t)
	}
}

func (s *store) deleteFair(t *Task) {
	k := fairKey(t)
	fb := s.fair[k][t.Priority]
	if fb == nil {
		return
	}
	head := fb.firstOf(t.ConcurrencyKey) == t
	fb.tasks.Delete(t)
	if head {
		fb.heads.Delete(t)
		if h := fb.firstOf(t.ConcurrencyKey); h != nil {
			fb.heads.ReplaceOrInsert(h)
		}
	}
	if fb.tasks.Len() == 0 {
		delete(s.fair[k], t.Priority)
		if len(s.fair[k]) == 0 {
			delete(s.fair, k)
		}
	}
}

// fairIter walks a fair band in placement order (byFair over all its keys), skipping the keys
// that have no room. The walk reads each key's head once (heads, after cursor) and then follows
// the keys it took from (started): a pass costs O((taken + keys skipped) × log n), and a key is
// skipped only while it holds its limit of active tasks, so the skipped keys are at most the
// active tasks, however long the backlog.
type fairIter struct {
	fb      *fairBand
	cursor  *Task // the last head read from fb.heads; nil before the first
	done    bool  // fb.heads is read to its end
	peek    *Task // a key's first task read from heads and not returned yet
	started []*Task
	hasRoom func(*Task) bool
}

// next returns the band's next task whose key has room, nil at the end.
func (it *fairIter) next() *Task {
	if it.peek != nil && !it.hasRoom(it.peek) {
		it.peek = nil
	}
	for it.peek == nil && !it.done {
		var h *Task
		visit := func(t *Task) bool {
			if t == it.cursor {
				return true
			}
			h = t
			return false
		}
		if it.cursor == nil {
			it.fb.heads.Ascend(visit)
		} else {
			it.fb.heads.AscendGreaterOrEqual(it.cursor, visit)
		}
		if h == nil {
			it.done = true
			break
		}
		it.cursor = h
		if h.CancelRequested {
			h = it.fb.nextOf(h)
		}
		if h != nil && it.hasRoom(h) {
			it.peek = h
		}
	}
	it.started = slices.DeleteFunc(it.started, func(t *Task) bool { return !it.hasRoom(t) })
	best := -1
	for i, t := range it.started {
		if best < 0 || byFair(t, it.started[best]) {
			best = i
		}
	}
	var t *Task
	switch {
	case best >= 0 && (it.peek == nil || byFair(it.started[best], it.peek)):
		t = it.started[best]
		it.started = slices.Delete(it.started, best, best+1)
	case it.peek != nil:
		t, it.peek = it.peek, nil
	default:
		return nil
	}
	if n := it.fb.nextOf(t); n != nil {
		it.started = append(it.started, n)
	}
	return t
}

// KeyObserver receives, after each applied entry and with the FSM's lock held, how many tasks of
// each concurrency key are assigned or running: a map it may only read, and not keep. It must
// return at once and not call the FSM. Tests check every replica's limits with it, entry by entry.
type KeyObserver func(index uint64, active map[string]int)

// SetKeyObserver installs o (nil removes it).
func (f *FSM) SetKeyObserver(o KeyObserver) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keyObserver = o
}
