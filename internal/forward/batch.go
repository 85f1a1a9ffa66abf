package forward

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/net/http/httpguts"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/internal/httpapi"
)

// A follower batches its forwards as the leader batches its proposals: while a few batch calls to
// the leader are in flight, new forwards queue and then go out together as one internode call.
// An idle follower sends a forward at once, alone, so batching adds no latency; a busy one makes
// one round trip for many writes instead of one each.
//
// The leader runs every request of a batch through Serve, the handler of a single forward, each
// in its own goroutine, and streams each reply back as soon as it is ready, so a slow write does
// not hold the replies of the others.
//
// The wire is a length-prefixed framing (lengths are unsigned varints):
//
//	batch: version byte, count, count × (header pairs, body)
//	reply stream: version byte, then per reply as it completes: index, status, header pairs, body
//
// where header pairs are a count then count × (key, value), and a key, a value or a body is a
// length then its bytes.

// BatchPath is the leader's internode route for a batch of forwarded requests.
const BatchPath = "/v1/internode/api/batch"

// Limits of a batch. A follower sends a request that does not fit one (a large body: a batch
// submit near its cap) as a single forward; the leader refuses a batch beyond them whole.
const (
	maxInFlight    = 2       // batch calls a follower has in flight to the leader
	maxBatchItems  = 256     // requests per batch
	maxBatchBytes  = 4 << 20 // an encoded batch
	maxItemBytes   = 1 << 20 // one request's headers and body, encoded
	maxItemHeaders = 128     // header values of one request
	maxHeaderKey   = 256     // bytes of one header's name

	maxReplyHeaders = 256      // header values of one reply
	maxReplyHeader  = 1 << 20  // bytes of one reply's headers
	maxReplyBody    = 64 << 20 // bytes of one reply's body, as a single forward reads it

	batchVersion     = 1
	batchContentType = "application/x-taskworker-forward-batch"
)

// batchItem is one request of a batch as the leader decodes it: the headers and body of a single
// forward (Send's).
type batchItem struct {
	header http.Header
	body   []byte
}

// itemSize is the encoded size of a request of header and body; ok is false when it has more
// header values than a batch may carry.
func itemSize(header http.Header, body []byte) (size int, ok bool) {
	values := 0
	size = binary.MaxVarintLen64 + len(body)
	for k, vs := range header {
		values += len(vs)
		for _, v := range vs {
			size += 2*binary.MaxVarintLen64 + len(k) + len(v)
		}
		if len(k) > maxHeaderKey {
			return size, false
		}
	}
	return size + binary.MaxVarintLen64, values <= maxItemHeaders
}

func appendBytes(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendHeader(b []byte, h http.Header) []byte {
	n := 0
	for _, vs := range h {
		n += len(vs)
	}
	b = binary.AppendUvarint(b, uint64(n))
	for k, vs := range h {
		for _, v := range vs {
			b = appendBytes(b, k)
			b = appendBytes(b, v)
		}
	}
	return b
}

// encodeBatch encodes a batch of requests.
func encodeBatch(items []*pending) []byte {
	size := 1 + binary.MaxVarintLen64
	for _, it := range items {
		size += it.size
	}
	b := make([]byte, 0, size)
	b = append(b, batchVersion)
	b = binary.AppendUvarint(b, uint64(len(items)))
	for _, it := range items {
		b = appendHeader(b, it.header)
		b = appendBytes(b, string(it.body))
	}
	return b
}

// errBatch is the cause of every refusal of a malformed batch or reply stream.
var errBatch = errors.New("malformed forward batch")

// decoder reads a batch held in memory. Every length is checked against its cap and against the
// bytes left before anything is allocated for it, so a batch allocates no more than its size.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: "+format, append([]any{errBatch}, args...)...)
	}
}

func (d *decoder) uvarint(max uint64, what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("%s: bad or missing length", what)
		return 0
	}
	d.b = d.b[n:]
	if v > max {
		d.fail("%s: %d is more than %d", what, v, max)
		return 0
	}
	return v
}

func (d *decoder) bytes(max int, what string) []byte {
	n := d.uvarint(uint64(max), what)
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("%s: %d bytes, %d left", what, n, len(d.b))
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// decodeBatch decodes a batch of requests. Its bodies share b's memory.
func decodeBatch(b []byte) ([]batchItem, error) {
	if len(b) > maxBatchBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", errBatch, len(b), maxBatchBytes)
	}
	if len(b) == 0 || b[0] != batchVersion {
		return nil, fmt.Errorf("%w: unknown version", errBatch)
	}
	d := &decoder{b: b[1:]}
	n := d.uvarint(maxBatchItems, "request count")
	if d.err == nil && n == 0 {
		d.fail("no requests")
	}
	if d.err != nil {
		return nil, d.err
	}
	items := make([]batchItem, 0, n)
	for i := range n {
		left := len(d.b)
		h := decodeHeader(d, maxItemHeaders, i)
		body := d.bytes(maxItemBytes, "body")
		if d.err == nil && left-len(d.b) > maxItemBytes+binary.MaxVarintLen64*(2*maxItemHeaders+2) {
			d.fail("request %d: %d bytes, more than %d", i, left-len(d.b), maxItemBytes)
		}
		if d.err != nil {
			return nil, d.err
		}
		items = append(items, batchItem{header: h, body: body})
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the last request", errBatch, len(d.b))
	}
	return items, nil
}

// decodeHeader decodes the header pairs of request item. A name is canonical, as net/http makes
// it, so that a forward header sent in another case is found (and dropped) as Serve finds it.
// Names and values share one string and the values one slice: a request's header costs a few
// allocations, not several per pair.
func decodeHeader(d *decoder, maxValues uint64, item uint64) http.Header {
	n := d.uvarint(maxValues, "header count")
	if d.err != nil {
		d.err = fmt.Errorf("request %d: %w", item, d.err)
		return nil
	}
	// The pairs are checked and measured first, then copied out of the batch in one string.
	start := d.b
	for range n {
		k := d.bytes(maxHeaderKey, "header name")
		v := d.bytes(maxItemBytes, "header value")
		if d.err != nil {
			d.err = fmt.Errorf("request %d: %w", item, d.err)
			return nil
		}
		if !httpguts.ValidHeaderFieldName(string(k)) || !httpguts.ValidHeaderFieldValue(string(v)) {
			d.fail("request %d: invalid header %q", item, api.Truncate(string(k)))
			return nil
		}
	}
	return headerOf(string(start[:len(start)-len(d.b)]), n)
}

// headerOf builds the header of n pairs from their encoding pairs, already checked (lengths and
// validity). Names and values are substrings of pairs.
func headerOf(pairs string, n uint64) http.Header {
	h := make(http.Header, min(n, 16))
	values := make([]string, n)
	for i := range n {
		var k, v string
		k, pairs = nextString(pairs)
		v, pairs = nextString(pairs)
		key := http.CanonicalHeaderKey(k)
		values[i] = v
		if old, ok := h[key]; ok {
			h[key] = append(old[:len(old):len(old)], v)
		} else {
			h[key] = values[i : i+1 : i+1]
		}
	}
	return h
}

// nextString splits a length-prefixed string off s, whose lengths were checked before.
func nextString(s string) (string, string) {
	var l uint64
	var shift uint
	i := 0
	for ; s[i] >= 0x80; i++ {
		l |= uint64(s[i]&0x7f) << shift
		shift += 7
	}
	l |= uint64(s[i]) << shift
	s = s[i+1:]
	return s[:l], s[l:]
}

// appendReply encodes the reply to the batch's i-th request.
func appendReply(b []byte, i int, rep *reply) []byte {
	b = binary.AppendUvarint(b, uint64(i))
	b = binary.AppendUvarint(b, uint64(max(rep.status, http.StatusOK)))
	b = appendHeader(b, rep.header)
	return appendBytes(b, string(rep.body))
}

// readReplies reads a reply stream of a batch of n requests and hands each reply to deliver as
// it arrives. It stops at the end of the stream, or at the first malformed reply (one for a
// request that is not in the batch, or that has its reply already), with an error.
func readReplies(r io.Reader, n int, deliver func(i int, rep *reply)) error {
	br := bufio.NewReader(r)
	v, err := br.ReadByte()
	if err != nil {
		return fmt.Errorf("reply stream: %w", err)
	}
	if v != batchVersion {
		return fmt.Errorf("%w: reply stream of unknown version %d", errBatch, v)
	}
	got := make([]bool, n)
	for done := 0; done < n; done++ {
		i, err := binary.ReadUvarint(br)
		if err != nil {
			return fmt.Errorf("reply stream after %d of %d replies: %w", done, n, err)
		}
		if i >= uint64(n) || got[i] {
			return fmt.Errorf("%w: a reply to request %d of %d, or a second one", errBatch, i, n)
		}
		got[i] = true
		rep, err := readReply(br)
		if err != nil {
			return fmt.Errorf("reply %d: %w", i, err)
		}
		deliver(int(i), rep)
	}
	return nil
}

// readReply reads one reply after its index. Lengths are checked before anything is read, and a
// body is read as it arrives, never allocated from its stated length alone.
func readReply(br *bufio.Reader) (*reply, error) {
	status, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if status < 100 || status > 999 {
		return nil, fmt.Errorf("%w: status %d", errBatch, status)
	}
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if n > maxReplyHeaders {
		return nil, fmt.Errorf("%w: %d header values", errBatch, n)
	}
	// The pairs are read into one buffer, in their encoding, and checked; the header's names
	// and values are then substrings of one string.
	var pairs []byte
	if n > 0 {
		pairs = make([]byte, 0, 256) // a reply's usual headers fit
	}
	budget := int64(maxReplyHeader)
	for range n {
		start := len(pairs)
		if pairs, err = readPiece(br, pairs, &budget); err != nil {
			return nil, err
		}
		k := pairs[start:]
		k = k[len(k)-int(pieceLen(k)):]
		start = len(pairs)
		if pairs, err = readPiece(br, pairs, &budget); err != nil {
			return nil, err
		}
		v := pairs[start:]
		v = v[len(v)-int(pieceLen(v)):]
		if !httpguts.ValidHeaderFieldName(string(k)) || !httpguts.ValidHeaderFieldValue(string(v)) {
			return nil, fmt.Errorf("%w: invalid header %q", errBatch, api.Truncate(string(k)))
		}
	}
	rep := &reply{status: int(status), header: headerOf(string(pairs), n)}
	budget = maxReplyBody
	if rep.body, err = readBytes(br, &budget); err != nil {
		return nil, err
	}
	return rep, nil
}

// pieceLen is the length of the piece b holds: a uvarint length, then that many bytes.
func pieceLen(b []byte) uint64 {
	l, _ := binary.Uvarint(b)
	return l
}

// readPiece reads a length and that many bytes, taken from budget, and appends both, encoded as
// they came, to buf. The bytes are read as they arrive, never allocated from the stated length
// alone.
func readPiece(br *bufio.Reader, buf []byte, budget *int64) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return buf, err
	}
	if n > uint64(*budget) {
		return buf, fmt.Errorf("%w: %d bytes, more than the %d left", errBatch, n, *budget)
	}
	*budget -= int64(n)
	buf = binary.AppendUvarint(buf, n)
	for n > 0 {
		chunk := int(min(n, 4096))
		buf = slices.Grow(buf, chunk)
		m, err := io.ReadFull(br, buf[len(buf):len(buf)+chunk])
		buf = buf[:len(buf)+m]
		if err != nil {
			return buf, noEOF(err)
		}
		n -= uint64(chunk)
	}
	return buf, nil
}

// readBytes reads a length and that many bytes, taken from budget.
func readBytes(br *bufio.Reader, budget *int64) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if n > uint64(*budget) {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d left", errBatch, n, *budget)
	}
	*budget -= int64(n)
	if n <= 4096 {
		b := make([]byte, n)
		_, err := io.ReadFull(br, b)
		return b, noEOF(err)
	}
	var buf bytes.Buffer
	if _, err := io.CopyN(&buf, br, int64(n)); err != nil {
		return nil, noEOF(err)
	}
	return buf.Bytes(), nil
}

// noEOF is err, with a plain end of stream inside a reply made an unexpected one.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ServeBatch is the leader's side of a batch: it serves each request of the batch with Serve(api_),
// the handler of a single forward, all at once, and writes each reply as it completes. Replies
// ready together go out in one write. A batch that does not decode is refused whole, with 400,
// before any of its requests runs.
func (f *Forwarder) ServeBatch(api_ http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !f.c.IsLeader() {
			w.Header().Set(HeaderLeader, f.c.Leader())
			httpapi.WriteError(w, api.Errorf(api.CodeNotLeader, "this node is not the leader"))
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBatchBytes+1))
		if err != nil {
			httpapi.WriteError(w, api.Errorf(api.CodeInvalidRequest, "forwarded batch: read: %v", err))
			return
		}
		items, err := decodeBatch(body)
		if err != nil {
			httpapi.WriteError(w, api.Errorf(api.CodeInvalidRequest, "forwarded batch: %v", err))
			return
		}
		type done struct {
			i   int
			rep *reply
		}
		results := make(chan done, len(items)) // buffered: a handler never waits for the writer
		for i, it := range items {
			go func() {
				rep := newReply()
				body := new(itemBody)
				body.Reset(it.body)
				f.serveForward(api_, rep, r, it.header, body, int64(len(it.body)))
				results <- done{i, rep}
			}()
		}
		w.Header().Set("Content-Type", batchContentType)
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		buf := []byte{batchVersion}
		var werr error
		for left := len(items); left > 0; {
			d := <-results
			left--
			buf = appendReply(buf, d.i, d.rep)
			runtime.Gosched() // let replies completing together join this write
		more:
			for left > 0 {
				select {
				case d := <-results:
					left--
					buf = appendReply(buf, d.i, d.rep)
				default:
					break more
				}
			}
			if werr == nil { // after a failed write the follower is gone; the handlers still finish
				if _, werr = w.Write(buf); werr == nil {
					werr = rc.Flush()
				}
			}
			buf = buf[:0]
		}
	})
}

// itemBody is a batch item's body as a request body.
type itemBody struct{ bytes.Reader }

func (*itemBody) Close() error { return nil }

// pending is a forward queued on the follower for the next batch.
type pending struct {
	ctx    context.Context // the caller's: a forward whose caller gave up is not sent
	addr   string
	header http.Header
	body   []byte
	size   int               // encoded (itemSize)
	done   chan batchOutcome // buffered: the sender never waits for a caller that gave up
}

type batchOutcome struct {
	rep *reply
	err error
}

// batcher gathers a follower's forwards into batch calls.
type batcher struct {
	call func(ctx context.Context, addr, path string, header http.Header, body []byte) (*http.Response, error) // Cluster.Call
	// single sends one forward alone: to a leader that does not serve batches.
	single func(ctx context.Context, addr string, header http.Header, body []byte) (*reply, error)

	mu       sync.Mutex
	queue    []*pending
	inFlight int // senders running

	calls, items atomic.Int64 // batch calls made, and the requests they carried
}

// forward sends a request to the leader at addr in the next batch and waits for its reply, or
// for ctx to end.
func (b *batcher) forward(ctx context.Context, addr string, header http.Header, body []byte, size int) (*reply, error) {
	p := &pending{ctx: ctx, addr: addr, header: header, body: body, size: size, done: make(chan batchOutcome, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, p)
	start := b.inFlight < maxInFlight
	if start {
		b.inFlight++
	}
	b.mu.Unlock()
	if start {
		go b.send()
	}
	select {
	case o := <-p.done:
		return o.rep, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// send sends batches until the queue is empty.
func (b *batcher) send() {
	for {
		batch := b.take()
		if batch == nil {
			return
		}
		b.sendBatch(batch)
	}
}

// take takes the next batch off the queue: the first forward whose caller still waits, and the
// ones after it to the same address, within the batch's limits. It is nil when the queue is
// empty, and the sender ends then.
func (b *batcher) take() []*pending {
	b.mu.Lock()
	defer b.mu.Unlock()
	var batch []*pending
	rest := b.queue[:0]
	bytes := 0
	for _, p := range b.queue {
		switch {
		case p.ctx.Err() != nil:
			// nobody waits for it
		case len(batch) < maxBatchItems && bytes+p.size <= maxBatchBytes && (batch == nil || p.addr == batch[0].addr):
			batch = append(batch, p)
			bytes += p.size
		default:
			rest = append(rest, p)
		}
	}
	clear(b.queue[len(rest):])
	b.queue = rest
	if batch == nil {
		b.inFlight--
	}
	return batch
}

// sendBatch makes one batch call and hands each forward its reply. The call is cancelled once
// every caller of the batch has given up (raft named another leader, or the client went away).
func (b *batcher) sendBatch(batch []*pending) {
	b.calls.Add(1)
	b.items.Add(int64(len(batch)))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	for _, p := range batch {
		stop := context.AfterFunc(p.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	addr := batch[0].addr
	resp, err := b.call(ctx, addr, BatchPath, http.Header{"Content-Type": {batchContentType}}, encodeBatch(batch))
	if err != nil {
		fail(batch, fmt.Errorf("forward batch: %w", err))
		return
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		answered := make([]bool, len(batch))
		err := readReplies(resp.Body, len(batch), func(i int, rep *reply) {
			answered[i] = true
			batch[i].done <- batchOutcome{rep: rep}
		})
		if err != nil {
			err = fmt.Errorf("forward batch: %w", err)
			for i, p := range batch {
				if !answered[i] {
					p.done <- batchOutcome{err: err}
				}
			}
		}
	case http.StatusNotFound, http.StatusMethodNotAllowed:
		// A leader that serves no batches (an earlier release): each goes alone.
		for _, p := range batch {
			go func() {
				rep, err := b.single(p.ctx, addr, p.header, p.body)
				p.done <- batchOutcome{rep: rep, err: err}
			}()
		}
	default:
		// The batch was answered whole (not the leader, stopping, refused): each caller gets that
		// answer, as a single forward would.
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBody))
		if err != nil {
			fail(batch, fmt.Errorf("forward batch: %w", err))
			return
		}
		for _, p := range batch {
			p.done <- batchOutcome{rep: &reply{status: resp.StatusCode, header: resp.Header.Clone(), body: body}}
		}
	}
}

// fail gives err to each forward of batch.
func fail(batch []*pending, err error) {
	for _, p := range batch {
		p.done <- batchOutcome{err: err}
	}
}
