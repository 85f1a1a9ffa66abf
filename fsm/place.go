package fsm

import "time"

// PlaceProtocol is the protocol that added SubmitBatch.Place: a submit entry that carries the
// assignments of its own tasks, so that a task placed at its submit costs one entry, not two.
const PlaceProtocol = 12

// applyPlace applies p.Place after p's items, whose results are items: each assignment as a
// capped one (Assign.Capped) applied in an entry of its own right after the submit would be,
// but only for a task one of p's items created. A task the submit did not create (a duplicate
// ID, a unique key held, a debounced submit, one admission refused) is not assigned, and an
// assignment the FSM does not apply (an unknown, full or draining node, a stale boot ID) leaves
// its task pending for the scheduler loop. Its results are not the submit's: the command answers
// one result per submit item.
func (f *FSM) applyPlace(index uint64, now time.Time, p *SubmitBatch, items []ItemResult) {
	created := make(map[string]struct{}, len(items))
	for i, r := range items {
		if r.Err == nil && !r.Existing && r.ID == p.Items[i].ID {
			created[r.ID] = struct{}{}
		}
	}
	f.rates.expire(now)
	for _, a := range p.Place {
		if _, ok := created[a.TaskID]; !ok {
			continue
		}
		a.Capped = true
		f.assign(index, now, a)
	}
}
