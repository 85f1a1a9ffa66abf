package fsm

import (
	"reflect"
	"strings"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// The hot commands (submit, assign, report) are encoded by hand, field by field, into the same
// bytes msgpack's reflection encoder writes: a map of the fields in declaration order, each
// omitempty field left out when msgpack's isEmptyValue would leave it out. msgpack boxes every
// omitempty field to test it (reflect.Value.Interface), one allocation per field per item; these
// encoders allocate nothing but the entry.
//
// Each payload type has one table of its fields, one row per field. A field added to the struct
// and not to its table (or a table that no longer matches the struct's names, order or
// omitempty options) turns the hand-written encoder off for that type at init, so its commands
// go through msgpack's encoder and stay correct; TestFastEncodersCoverEveryField fails on it,
// and TestFastEncodeMatchesMsgpack compares the bytes of random payloads, every field set by
// reflection, with msgpack's.

type encoder = *msgpack.Encoder

// fastField is one field of a payload's hand-written encoder.
type fastField[T any] struct {
	name string // the msgpack tag's name
	// empty is msgpack's isEmptyValue for the field, for omitempty fields; nil: always written.
	empty func(v *T) bool
	put   func(e encoder, v *T) error
}

// fastStruct is a payload type's field table and whether it matches the struct (checked once).
type fastStruct[T any] struct {
	fields []fastField[T]
	ok     bool
}

func newFastStruct[T any](fields ...fastField[T]) *fastStruct[T] {
	return &fastStruct[T]{fields: fields, ok: fastFieldsMatch(reflect.TypeFor[T](), fieldNames(fields))}
}

func fieldNames[T any](fields []fastField[T]) []fastName {
	names := make([]fastName, len(fields))
	for i, f := range fields {
		names[i] = fastName{f.name, f.empty != nil}
	}
	return names
}

// fastName is a field as msgpack's struct encoder sees it.
type fastName struct {
	name      string
	omitempty bool
}

// msgpackFields lists t's fields as msgpack encodes them: tagged name, omitempty option, in
// declaration order. ok is false for what the tables do not model (an embedded or untagged
// field, as_array).
func msgpackFields(t reflect.Type) (names []fastName, ok bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("msgpack")
		if f.Anonymous || f.Name == "_msgpack" || tag == "" {
			return nil, false
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		omit := false
		for o := range strings.SplitSeq(opts, ",") {
			omit = omit || o == "omitempty"
		}
		names = append(names, fastName{name, omit})
	}
	return names, true
}

func fastFieldsMatch(t reflect.Type, names []fastName) bool {
	want, ok := msgpackFields(t)
	if !ok || len(want) != len(names) {
		return false
	}
	for i := range want {
		if want[i] != names[i] {
			return false
		}
	}
	return true
}

// encode writes v as msgpack's struct encoder does: a map of the fields not omitted.
func (s *fastStruct[T]) encode(e encoder, v *T) error {
	if v == nil {
		return e.EncodeNil()
	}
	n := 0
	for i := range s.fields {
		if f := &s.fields[i]; f.empty == nil || !f.empty(v) {
			n++
		}
	}
	if err := e.EncodeMapLen(n); err != nil {
		return err
	}
	for i := range s.fields {
		f := &s.fields[i]
		if f.empty != nil && f.empty(v) {
			continue
		}
		if err := e.EncodeString(f.name); err != nil {
			return err
		}
		if err := f.put(e, v); err != nil {
			return err
		}
	}
	return nil
}

// encodeSlice writes items as msgpack's slice encoder does.
func (s *fastStruct[T]) encodeSlice(e encoder, items []T) error {
	if items == nil {
		return e.EncodeNil()
	}
	if err := e.EncodeArrayLen(len(items)); err != nil {
		return err
	}
	for i := range items {
		if err := s.encode(e, &items[i]); err != nil {
			return err
		}
	}
	return nil
}

// Field helpers: each writes a field as msgpack writes its kind (int through EncodeInt, the
// compact form; int64 and uint8 kinds in their fixed-size forms, as msgpack does without
// UseCompactInts; []byte as bin, nil as nil; a *time.Time as the time extension).

func strField[T any](name string, omit bool, get func(*T) string) fastField[T] {
	f := fastField[T]{name: name, put: func(e encoder, v *T) error { return e.EncodeString(get(v)) }}
	if omit {
		f.empty = func(v *T) bool { return get(v) == "" }
	}
	return f
}

func intField[T any](name string, omit bool, get func(*T) int) fastField[T] {
	f := fastField[T]{name: name, put: func(e encoder, v *T) error { return e.EncodeInt(int64(get(v))) }}
	if omit {
		f.empty = func(v *T) bool { return get(v) == 0 }
	}
	return f
}

func durationField[T any](name string, omit bool, get func(*T) Duration) fastField[T] {
	f := fastField[T]{name: name, put: func(e encoder, v *T) error { return e.EncodeInt64(int64(get(v))) }}
	if omit {
		f.empty = func(v *T) bool { return get(v) == 0 }
	}
	return f
}

func bytesField[T any](name string, omit bool, get func(*T) []byte) fastField[T] {
	f := fastField[T]{name: name, put: func(e encoder, v *T) error { return e.EncodeBytes(get(v)) }}
	if omit {
		f.empty = func(v *T) bool { return len(get(v)) == 0 }
	}
	return f
}

func boolField[T any](name string, omit bool, get func(*T) bool) fastField[T] {
	f := fastField[T]{name: name, put: func(e encoder, v *T) error { return e.EncodeBool(get(v)) }}
	if omit {
		f.empty = func(v *T) bool { return !get(v) }
	}
	return f
}

// timePtrField is an omitempty *time.Time: msgpack omits it when nil and, as *time.Time has
// IsZero, when it points to the zero time.
func timePtrField[T any](name string, get func(*T) *time.Time) fastField[T] {
	return fastField[T]{
		name:  name,
		empty: func(v *T) bool { t := get(v); return t == nil || t.IsZero() },
		put:   func(e encoder, v *T) error { return e.EncodeTime(*get(v)) },
	}
}

// anyField writes a rarely set field through msgpack's own encoder; a pointer in an interface
// costs no allocation. With omit, a nil pointer is omitted (fields with IsZero need their own
// helper).
func anyField[T any, F any](name string, omit bool, get func(*T) *F) fastField[T] {
	f := fastField[T]{name: name, put: func(e encoder, v *T) error { return e.Encode(get(v)) }}
	if omit {
		f.empty = func(v *T) bool { return get(v) == nil }
	}
	return f
}

// The tables, in the structs' field order. A new field of Submit, Assign, Report or their batches
// gets one row here, with the struct's tag name and its omitempty.
var (
	fastSubmit = newFastStruct(
		strField("id", false, func(s *Submit) string { return s.ID }),
		strField("type", false, func(s *Submit) string { return s.Type }),
		strField("version", false, func(s *Submit) string { return s.Version }),
		bytesField("input", false, func(s *Submit) []byte { return s.Input }),
		intField("max_attempts", false, func(s *Submit) int { return s.MaxAttempts }),
		durationField("timeout", false, func(s *Submit) Duration { return s.Timeout }),
		strField("idempotency_key", true, func(s *Submit) string { return s.IdempotencyKey }),
		strField("execution_id", false, func(s *Submit) string { return s.ExecutionID }),
		strField("parent_id", true, func(s *Submit) string { return s.ParentID }),
		strField("submitted_by", true, func(s *Submit) string { return s.SubmittedBy }),
		strField("schedule", true, func(s *Submit) string { return s.Schedule }),
		strField("unique_key", true, func(s *Submit) string { return s.UniqueKey }),
		durationField("unique_for", true, func(s *Submit) Duration { return s.UniqueFor }),
		timePtrField("run_at", func(s *Submit) *time.Time { return s.RunAt }),
		intField("priority", true, func(s *Submit) int { return s.Priority }),
		strField("queue", true, func(s *Submit) string { return s.Queue }),
		strField("concurrency_key", true, func(s *Submit) string { return s.ConcurrencyKey }),
		intField("concurrency_limit", true, func(s *Submit) int { return s.ConcurrencyLimit }),
		strField("rate_limit", true, func(s *Submit) string { return s.RateLimit }),
		strField("rate_key", true, func(s *Submit) string { return s.RateKey }),
		strField("debounce_key", true, func(s *Submit) string { return s.DebounceKey }),
		durationField("debounce", true, func(s *Submit) Duration { return s.Debounce }),
		anyField("trace", true, func(s *Submit) *TraceContext { return s.Trace }),
	)
	fastSubmitBatch = newFastStruct(
		fastField[SubmitBatch]{name: "items", put: func(e encoder, b *SubmitBatch) error { return fastSubmit.encodeSlice(e, b.Items) }},
		anyField("admission", true, func(b *SubmitBatch) *Admission { return b.Admission }),
		fastField[SubmitBatch]{
			name:  "place",
			empty: func(b *SubmitBatch) bool { return len(b.Place) == 0 },
			put:   func(e encoder, b *SubmitBatch) error { return fastAssign.encodeSlice(e, b.Place) },
		},
	)

	fastAssign = newFastStruct(
		strField("task_id", false, func(a *Assign) string { return a.TaskID }),
		strField("node", false, func(a *Assign) string { return a.Node }),
		strField("boot_id", false, func(a *Assign) string { return a.BootID }),
		boolField("capped", true, func(a *Assign) bool { return a.Capped }),
	)
	fastAssignBatch = newFastStruct(
		fastField[AssignBatch]{name: "items", put: func(e encoder, b *AssignBatch) error { return fastAssign.encodeSlice(e, b.Items) }},
		fastField[AssignBatch]{
			name:  "due",
			empty: func(b *AssignBatch) bool { return len(b.Due) == 0 },
			put:   func(e encoder, b *AssignBatch) error { return e.Encode(&b.Due) },
		},
	)

	fastReport = newFastStruct(
		strField("task_id", false, func(r *Report) string { return r.TaskID }),
		intField("attempt", false, func(r *Report) int { return r.Attempt }),
		strField("node", false, func(r *Report) string { return r.Node }),
		strField("boot_id", false, func(r *Report) string { return r.BootID }),
		fastField[Report]{name: "kind", put: func(e encoder, r *Report) error { return e.EncodeUint8(uint8(r.Kind)) }},
		bytesField("result", true, func(r *Report) []byte { return r.Result }),
		anyField("error", true, func(r *Report) *TaskError { return r.Error }),
		bytesField("checkpoint", true, func(r *Report) []byte { return r.Checkpoint }),
		timePtrField("not_before", func(r *Report) *time.Time { return r.NotBefore }),
		fastField[Report]{
			name:  "wait_for",
			empty: func(r *Report) bool { return len(r.WaitFor) == 0 },
			put:   func(e encoder, r *Report) error { return e.Encode(&r.WaitFor) },
		},
	)
	fastReportBatch = newFastStruct(
		fastField[ReportBatch]{name: "items", put: func(e encoder, b *ReportBatch) error { return fastReport.encodeSlice(e, b.Items) }},
	)
)

// encodeFast writes p with its hand-written encoder; handled is false when p's type has none or
// its tables do not match its structs (see above).
func encodeFast(e encoder, p Payload) (handled bool, err error) {
	switch p := p.(type) {
	case *SubmitBatch:
		if fastSubmitBatch.ok && fastSubmit.ok {
			return true, fastSubmitBatch.encode(e, p)
		}
	case *AssignBatch:
		if fastAssignBatch.ok && fastAssign.ok {
			return true, fastAssignBatch.encode(e, p)
		}
	case *ReportBatch:
		if fastReportBatch.ok && fastReport.ok {
			return true, fastReportBatch.encode(e, p)
		}
	}
	return false, nil
}
