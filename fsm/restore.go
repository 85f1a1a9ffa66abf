package fsm

import (
	"bufio"
	"bytes"
	"fmt"
	"runtime"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/internal/mpcheck"
)

// A snapshot's tasks are restored by a pipeline, because a restart at a million tasks is CPU
// bound and one goroutine would use one core: the snapshot's reader cuts the task array into
// chunks of restoreChunk records, decoders turn chunks into records on the other cores (msgpack
// by reflection, about half of the CPU), and the caller inserts them into the indexes in the
// snapshot's order. Restoring 1,000,000 finished tasks (a 500 MB snapshot) took 9.5 s in one
// goroutine and takes 4.8 s on 2 cores (BENCHMARKS.md).

// restoreChunk is how many records one decoder takes at a time.
const restoreChunk = 512

// restoreBuffer is the size of the snapshot reader's buffer, in which the reader finds where
// records end; a record longer than that is read by msgpack's own (slower) walk.
const restoreBuffer = 256 << 10

// decoded is what a decoder made of one chunk.
type decoded struct {
	tasks []*Task
	err   error
}

// decodeTasks reads the snapshot's task array into st; dec reads br, and nothing else does
// until decodeTasks returns. Records are framed by mpcheck.Check, one pass over bytes already in the reader's buffer (what
// msgpack's Skip did before cost a third of the restore's CPU), and copied out a chunk at a time.
func decodeTasks(dec *msgpack.Decoder, br *bufio.Reader, st *store) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	n = max(n, 0)
	st.reserve(n)

	type job struct {
		data []byte
		k    int
		out  chan decoded
	}
	workers := max(1, min(runtime.GOMAXPROCS(0), 4))
	jobs := make(chan job, workers)
	// Chunk buffers go back to the reader once decoded (records copy what they keep): fresh
	// memory for each would cost the reader a page fault per 4 KB, a quarter of its time.
	free := make(chan []byte, 2*workers+2)
	order := make(chan chan decoded, 2*workers) // the chunks' results in snapshot order
	stop := make(chan struct{})
	defer close(stop) // an error anywhere stops the reader and the decoders
	for range workers {
		go func() {
			for j := range jobs {
				j.out <- decodeChunk(j.data, j.k)
				select {
				case free <- j.data[:0]:
				default:
				}
			}
		}()
	}
	readErr := make(chan error, 1)
	go func() { // the reader: cuts the array into chunks
		defer close(order)
		defer close(jobs)
		readErr <- func() (err error) {
			defer func() {
				if p := recover(); p != nil { // msgpack v5 panics on some malformed input
					err = fmt.Errorf("malformed msgpack: %v", p)
				}
			}()
			size := 64 << 10
			for left := n; left > 0; {
				k := min(left, restoreChunk)
				var data []byte
				select {
				case data = <-free:
				default:
					data = make([]byte, 0, size)
				}
				for got := 0; got < k; {
					view, _ := br.Peek(br.Buffered())
					used := 0
					for got < k {
						m, err := mpcheck.Check(view[used:])
						if err != nil { // the view ends inside this record (or it is malformed)
							break
						}
						used += m
						got++
					}
					if used > 0 {
						data = append(data, view[:used]...)
						if _, err := br.Discard(used); err != nil {
							return err
						}
						continue
					}
					if more, _ := br.Peek(br.Size()); len(more) > len(view) {
						continue // the buffer had room for more of the record
					}
					// A full buffer or the end of the input, and still no whole record: one longer
					// than the buffer, or malformed. msgpack's own walk reads the first and
					// reports the second.
					raw, err := dec.DecodeRaw()
					if err != nil {
						return err
					}
					data = append(data, raw...)
					got++
				}
				size = len(data) + len(data)/8 // the next chunk is probably about as long
				j := job{data: data, k: k, out: make(chan decoded, 1)}
				select {
				case order <- j.out:
				case <-stop:
					return nil
				}
				select {
				case jobs <- j:
				case <-stop:
					return nil
				}
				left -= k
			}
			return nil
		}()
	}()
	for out := range order { // every chunk in order has gone to a decoder: it gets a result
		d := <-out
		if d.err != nil {
			return d.err
		}
		for _, t := range d.tasks {
			if old, ok := st.get(t.ID); ok { // a later record of the same ID wins, as with the map before
				st.delete(old)
			}
			st.insert(t)
		}
	}
	return <-readErr
}

// decodeChunk decodes k task records from data.
func decodeChunk(data []byte, k int) (d decoded) {
	defer func() {
		if p := recover(); p != nil {
			d = decoded{err: fmt.Errorf("malformed msgpack: %v", p)}
		}
	}()
	dec := msgpack.NewDecoder(bytes.NewReader(data))
	d.tasks = make([]*Task, k)
	for i := range d.tasks {
		t := new(Task)
		if err := dec.Decode(t); err != nil {
			return decoded{err: err}
		}
		d.tasks[i] = t
	}
	return d
}
