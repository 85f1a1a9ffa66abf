package fsm

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/google/btree"
)

// Rate limits: named token buckets that bound how fast tasks start (are assigned), cluster-wide.
// A task names a limit (Task.RateLimit) and optionally a key (Task.RateKey): each key of a limit
// has a bucket of its own, so one limit can hold every tenant to the same rate apart.
//
// A bucket is kept as its theoretical arrival time (GCRA, as in Redis's redis-cell): TAT is when
// the bucket will be full again, in nanoseconds since the Unix epoch. With interval T (the time
// one token takes to come back) and burst B, the bucket holds floor((B×T − (TAT − now)) / T)
// tokens at now, at most B; taking one moves TAT to max(TAT, now) + T. Everything is integer
// arithmetic on the command's time (Command.Now), so every replica holds the same buckets. A full
// bucket is the same as none, and is dropped (at the next assignment after it filled), so the
// table holds only the buckets that tasks emptied recently.
//
// T is the limit's period divided by its count, rounded up: "3/s" lets a task start every
// 333,333,334 ns, never faster than the rate asked for.

// Command types of the rate limit table.
const (
	CmdRateLimitSet    CommandType = 29 // create or change a rate limit
	CmdRateLimitDelete CommandType = 30 // remove a rate limit and its buckets
	// 31 is reserved for this table.
)

// RateLimitProtocol is the protocol that introduced rate limits and debounced submits: the rate
// limit commands, and Submit's RateLimit, RateKey, DebounceKey and Debounce.
const RateLimitProtocol = 9

// Rate limit bounds.
const (
	MaxRateCount    = 1_000_000 // tokens per period
	MaxRateBurst    = 100_000
	MaxRateLimitLen = 64 // bytes in a limit's name
	// MaxDebounce bounds a debounced submit's quiet window.
	MaxDebounce = 24 * time.Hour
)

// ErrUnknownRateLimit: a submit names a rate limit the table does not hold, or a delete one it
// does not hold.
var ErrUnknownRateLimit = newError("unknown_rate_limit", "unknown rate limit")

// RateLimit is a named limit: Count tokens per Period, at most Burst held.
type RateLimit struct {
	Name        string   `msgpack:"name"`
	Count       int64    `msgpack:"count"`
	Period      Duration `msgpack:"period"`
	Burst       int64    `msgpack:"burst"`
	CreateIndex uint64   `msgpack:"create_index"`
	ModifyIndex uint64   `msgpack:"modify_index"`
}

// Interval is the time one token takes to come back: Period / Count, rounded up.
func (l *RateLimit) Interval() time.Duration {
	p, c := int64(l.Period), l.Count
	return time.Duration((p + c - 1) / c)
}

// CheckRateLimit validates a limit's rate and burst.
func CheckRateLimit(l *RateLimit) error {
	switch {
	case l.Name == "" || len(l.Name) > MaxRateLimitLen:
		return fmt.Errorf("%w: a rate limit's name has 1 to %d bytes", ErrBadCommand, MaxRateLimitLen)
	case l.Count < 1 || l.Count > MaxRateCount:
		return fmt.Errorf("%w: a rate's count is between 1 and %d", ErrBadCommand, MaxRateCount)
	case l.Period != Duration(time.Second) && l.Period != Duration(time.Minute) && l.Period != Duration(time.Hour):
		return fmt.Errorf("%w: a rate's period is a second, a minute or an hour", ErrBadCommand)
	case l.Burst < 1 || l.Burst > MaxRateBurst:
		return fmt.Errorf("%w: a rate limit's burst is between 1 and %d", ErrBadCommand, MaxRateBurst)
	}
	return nil
}

// RateLimitSet creates a rate limit or changes one's rate and burst; its buckets keep their state.
type RateLimitSet struct {
	Name   string   `msgpack:"name"`
	Count  int64    `msgpack:"count"`
	Period Duration `msgpack:"period"`
	Burst  int64    `msgpack:"burst"`
}

// RateLimitDelete removes a rate limit and its buckets. Tasks that name it are no longer held by
// it: they start as fast as the rest of placement lets them.
type RateLimitDelete struct {
	Name string `msgpack:"name"`
}

// RateBucket names one bucket: a limit and a key ("" for the limit's own bucket).
type RateBucket struct {
	Limit string `msgpack:"limit"`
	Key   string `msgpack:"key,omitempty"`
}

// rateBucket is a stored bucket: when it will be full again (UnixNano).
type rateBucket struct {
	RateBucket
	TAT int64 `msgpack:"tat"`
}

// rateTable is the rate limits by name, the buckets that are not full, and those buckets again by
// TAT (to drop the full ones in order).
type rateTable struct {
	limits  map[string]*RateLimit
	buckets map[RateBucket]*rateBucket
	byTAT   *btree.BTreeG[*rateBucket]
}

// rateSection is the table in a snapshot, in name order.
type rateSection struct {
	Limits  []RateLimit  `msgpack:"limits"`
	Buckets []rateBucket `msgpack:"buckets,omitempty"`
}

func byTAT(a, b *rateBucket) bool {
	return cmp.Or(cmp.Compare(a.TAT, b.TAT), cmp.Compare(a.Limit, b.Limit), cmp.Compare(a.Key, b.Key)) < 0
}

func newRateTable() rateTable {
	return rateTable{limits: map[string]*RateLimit{}, buckets: map[RateBucket]*rateBucket{},
		byTAT: btree.NewG(btreeDegree, byTAT)}
}

func (r *rateTable) zero() bool { return len(r.limits) == 0 && len(r.buckets) == 0 }

// section is the table's snapshot form, in a replica-independent order.
func (r *rateTable) section() rateSection {
	var s rateSection
	for _, name := range sortedKeys(r.limits) {
		s.Limits = append(s.Limits, *r.limits[name])
	}
	for _, b := range r.buckets {
		s.Buckets = append(s.Buckets, *b)
	}
	slices.SortFunc(s.Buckets, func(a, b rateBucket) int {
		return cmp.Or(cmp.Compare(a.Limit, b.Limit), cmp.Compare(a.Key, b.Key))
	})
	return s
}

func init() {
	register(Spec[RateLimitSet]{Type: CmdRateLimitSet, Name: "rate_limit_set", Since: RateLimitProtocol, Apply: (*FSM).applyRateLimitSet})
	register(Spec[RateLimitDelete]{Type: CmdRateLimitDelete, Name: "rate_limit_delete", Since: RateLimitProtocol, Apply: (*FSM).applyRateLimitDelete})

	registerTable(Table[rateSection]{
		Name: "rate_limits",
		Pos:  110,
		// Absent while no limit was ever set: snapshots and digests are those of releases before.
		Capture: func(f *FSM) (rateSection, bool) { return f.rates.section(), !f.rates.zero() },
		Check: func(s *rateSection) error {
			for i := range s.Limits {
				if err := CheckRateLimit(&s.Limits[i]); err != nil {
					return err
				}
			}
			return nil
		},
		Install: func(f *FSM, s *rateSection) {
			f.rates = newRateTable()
			if s == nil {
				return
			}
			for i := range s.Limits {
				l := s.Limits[i]
				f.rates.limits[l.Name] = &l
			}
			for i := range s.Buckets {
				b := s.Buckets[i]
				f.rates.buckets[b.RateBucket] = &b
				f.rates.byTAT.ReplaceOrInsert(&b)
			}
		},
		Digest: func(f *FSM, put func(any)) {
			if !f.rates.zero() {
				put("rate_limits")
				put(f.rates.section())
			}
		},
	})
}

func (f *FSM) applyRateLimitSet(index uint64, _ time.Time, p *RateLimitSet) ([]ItemResult, error) {
	l := &RateLimit{Name: p.Name, Count: p.Count, Period: p.Period, Burst: p.Burst, CreateIndex: index, ModifyIndex: index}
	if err := CheckRateLimit(l); err != nil {
		return nil, err
	}
	if old, ok := f.rates.limits[p.Name]; ok {
		l.CreateIndex = old.CreateIndex
	}
	f.rates.limits[p.Name] = l
	return nil, nil
}

func (f *FSM) applyRateLimitDelete(_ uint64, _ time.Time, p *RateLimitDelete) ([]ItemResult, error) {
	if _, ok := f.rates.limits[p.Name]; !ok {
		return nil, ErrUnknownRateLimit
	}
	delete(f.rates.limits, p.Name)
	for k, b := range f.rates.buckets {
		if k.Limit == p.Name {
			f.rates.drop(b)
		}
	}
	return nil, nil
}

func (r *rateTable) drop(b *rateBucket) {
	delete(r.buckets, b.RateBucket)
	r.byTAT.Delete(b)
}

// expire drops the buckets that are full at now: O(log n) per bucket dropped.
func (r *rateTable) expire(now time.Time) {
	ns := now.UnixNano()
	for {
		b, ok := r.byTAT.Min()
		if !ok || b.TAT > ns {
			return
		}
		r.drop(b)
	}
}

// tokens is how many tokens bucket b holds at now, and when it holds one more (zero when full);
// ok is false when b's limit does not exist (nothing holds its tasks back).
func (r *rateTable) tokens(b RateBucket, now time.Time) (n int64, next time.Time, ok bool) {
	l := r.limits[b.Limit]
	if l == nil {
		return 0, time.Time{}, false
	}
	st := r.buckets[b]
	if st == nil {
		return l.Burst, time.Time{}, true
	}
	if now.IsZero() { // no time to count at (a replica that applied nothing since it started)
		return 0, time.Unix(0, st.TAT), true
	}
	ns := now.UnixNano()
	if st.TAT <= ns {
		return l.Burst, time.Time{}, true
	}
	t := int64(l.Interval())
	n = max((l.Burst*t-(st.TAT-ns))/t, 0)
	// The bucket holds n+1 tokens from TAT − (B − n − 1)×T on.
	return n, time.Unix(0, st.TAT-(l.Burst-n-1)*t), true
}

// take removes one token from bucket b at now; the caller checked that it holds one.
func (r *rateTable) take(b RateBucket, now time.Time) {
	l := r.limits[b.Limit]
	if l == nil {
		return
	}
	ns := now.UnixNano()
	st := r.buckets[b]
	if st != nil {
		r.byTAT.Delete(st)
	} else {
		st = &rateBucket{RateBucket: b, TAT: ns}
	}
	st.TAT = max(st.TAT, ns) + int64(l.Interval())
	r.buckets[b] = st
	r.byTAT.ReplaceOrInsert(st)
}

// rateBucketOf is the bucket a task draws from, ok false for a task that names no limit.
func rateBucketOf(t *Task) (RateBucket, bool) {
	return RateBucket{t.RateLimit, t.RateKey}, t.RateLimit != ""
}

// rateAdmits reports whether t may start at now as far as its rate limit goes.
func (r *rateTable) admits(t *Task, now time.Time) bool {
	b, named := rateBucketOf(t)
	if !named {
		return true
	}
	n, _, ok := r.tokens(b, now)
	return !ok || n >= 1
}

// RateLimitStatus is a rate limit and its bucket's tokens at AsOf.
type RateLimitStatus struct {
	RateLimit
	// Tokens is what the bucket asked for holds at AsOf (zero while this replica has applied
	// nothing since it started: then a bucket in the table counts as empty); Keys is how many
	// keyed buckets of the limit are not full.
	Tokens int64
	Keys   int
	AsOf   time.Time
}

// RateLimits returns every rate limit by name, with its own (unkeyed) bucket's tokens as of the
// last applied entry's time.
func (f *FSM) RateLimits() []RateLimitStatus {
	f.mu.RLock()
	defer f.mu.RUnlock()
	keys := map[string]int{}
	for k := range f.rates.buckets {
		if k.Key != "" {
			keys[k.Limit]++
		}
	}
	out := make([]RateLimitStatus, 0, len(f.rates.limits))
	for _, name := range sortedKeys(f.rates.limits) {
		n, _, _ := f.rates.tokens(RateBucket{Limit: name}, f.lastNow)
		out = append(out, RateLimitStatus{RateLimit: *f.rates.limits[name], Tokens: n, Keys: keys[name], AsOf: f.lastNow})
	}
	return out
}

// RateLimit returns one rate limit with the tokens of its bucket for key ("" the limit's own) as
// of the last applied entry's time.
func (f *FSM) RateLimit(name, key string) (RateLimitStatus, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	l, ok := f.rates.limits[name]
	if !ok {
		return RateLimitStatus{}, false
	}
	st := RateLimitStatus{RateLimit: *l, AsOf: f.lastNow}
	st.Tokens, _, _ = f.rates.tokens(RateBucket{name, key}, f.lastNow)
	for k := range f.rates.buckets {
		if k.Limit == name && k.Key != "" {
			st.Keys++
		}
	}
	return st, true
}

// RateTokens is what bucket b holds at now and when it holds one more (zero when full); ok is
// false when its limit does not exist.
func (f *FSM) RateTokens(b RateBucket, now time.Time) (n int64, next time.Time, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.rates.tokens(b, now)
}

// HasRateLimit reports whether the named rate limit exists.
func (f *FSM) HasRateLimit(name string) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	_, ok := f.rates.limits[name]
	return ok
}
