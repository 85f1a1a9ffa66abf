package fsm

// TraceProtocol is the protocol that added trace contexts to submits and task records
// (Submit.Trace, Task.Trace, and a workflow step's Task.Trace).
const TraceProtocol = 11

// TraceContext is the W3C trace context a task's spans continue: the trace, the span that
// submitted the task (the parent of its placement and attempt spans, on whichever node runs
// them), and the trace flags (bit 0: sampled). It is for correlation only: nothing in the
// cluster decides anything by it.
type TraceContext struct {
	TraceID [16]byte `msgpack:"trace_id"`
	SpanID  [8]byte  `msgpack:"span_id"`
	Flags   byte     `msgpack:"flags,omitempty"`
}

// traceLen is a TraceContext's size in a frozen record.
const traceLen = 16 + 8 + 1

// Valid reports whether tc names a trace and a span: W3C forbids all-zero IDs.
func (tc *TraceContext) Valid() bool {
	return tc != nil && tc.TraceID != [16]byte{} && tc.SpanID != [8]byte{}
}

// traceNeedsProtocol is TraceProtocol for a submit with a trace context, else 0.
func (s *Submit) traceNeedsProtocol() int {
	if s.Trace != nil {
		return TraceProtocol
	}
	return 0
}

// dropTraces removes the trace contexts of subs while a node older than TraceProtocol is up: it
// could not decode them, and a task is worth more than its trace. The leader does this before it
// proposes (prepareSubmit, prepareWorkflowSubmit), so such a task is accepted without one.
func (f *FSM) dropTraces(subs []Submit) {
	for i := range subs {
		if subs[i].Trace != nil {
			if lowest, _ := f.lowestProtocol(); lowest < TraceProtocol {
				for j := range subs {
					subs[j].Trace = nil
				}
			}
			return
		}
	}
}
