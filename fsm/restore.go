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
// until decodeTasks returns.
func decodeTasks(dec *msgpack.Decoder, br *bufio.Reader, st *store) error {
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return err
	}
	n = max(n, 0)
	st.reserve(n)

	workers := max(1, min(runtime.GOMAXPROCS(0), 4))
	p := &pipeline{
		jobs: make(chan chunkJob, workers),
		// Chunk buffers go back to the reader once decoded (records copy what they keep): fresh
		// memory for each would cost the reader a page fault per 4 KB, a quarter of its time.
		free:  make(chan []byte, 2*workers+2),
		order: make(chan chan decoded, 2*workers),
		stop:  make(chan struct{}),
	}
	defer close(p.stop) // an error anywhere stops the reader and the decoders
	for range workers {
		go p.decode()
	}
	readErr := make(chan error, 1)
	go func() {
		defer close(p.order)
		defer close(p.jobs)
		readErr <- p.read(dec, br, n)
	}()
	for out := range p.order { // every chunk in order has gone to a decoder: it gets a result
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

// pipeline connects the reader, the decoders and the inserting caller of one restore.
type pipeline struct {
	jobs  chan chunkJob
	free  chan []byte       // decoded chunks' buffers, for the reader to fill again
	order chan chan decoded // the chunks' results in snapshot order
	stop  chan struct{}     // closed when the caller returns
}

// chunkJob is k records in data, and where their decoded records go.
type chunkJob struct {
	data []byte
	k    int
	out  chan decoded
}

// decode turns chunks into records until the reader closes jobs.
func (p *pipeline) decode() {
	for j := range p.jobs {
		j.out <- decodeChunk(j.data, j.k)
		select {
		case p.free <- j.data[:0]:
		default:
		}
	}
}

// read cuts the n records that follow in br into chunks and hands each to a decoder, its result
// channel to the caller first so that the caller inserts in order.
func (p *pipeline) read(dec *msgpack.Decoder, br *bufio.Reader, n int) (err error) {
	defer func() {
		if r := recover(); r != nil { // msgpack v5 panics on some malformed input
			err = fmt.Errorf("malformed msgpack: %v", r)
		}
	}()
	size := 64 << 10
	for left := n; left > 0; {
		k := min(left, restoreChunk)
		var data []byte
		select {
		case data = <-p.free:
		default:
			data = make([]byte, 0, size)
		}
		if data, err = frame(dec, br, data, k); err != nil {
			return err
		}
		size = len(data) + len(data)/8 // the next chunk is probably about as long
		j := chunkJob{data: data, k: k, out: make(chan decoded, 1)}
		select {
		case p.order <- j.out:
		case <-p.stop:
			return nil
		}
		select {
		case p.jobs <- j:
		case <-p.stop:
			return nil
		}
		left -= k
	}
	return nil
}

// frame appends the next k whole records from br to data. Records are found by mpcheck.Check,
// one pass over bytes already in the reader's buffer (msgpack's Skip, tried first, cost a third
// of the restore's CPU), and copied out as many at a time as the buffer holds.
func frame(dec *msgpack.Decoder, br *bufio.Reader, data []byte, k int) ([]byte, error) {
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
				return nil, err
			}
			continue
		}
		if more, _ := br.Peek(br.Size()); len(more) > len(view) {
			continue // the buffer had room for more of the record
		}
		// A full buffer or the end of the input, and still no whole record: one longer than the
		// buffer, or malformed. msgpack's own walk reads the first and reports the second.
		raw, err := dec.DecodeRaw()
		if err != nil {
			return nil, err
		}
		data = append(data, raw...)
		got++
	}
	return data, nil
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
