package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/taskworker/taskworker/api"
)

// FuzzSubmitDecoder feeds arbitrary bodies to POST /v1/tasks, the decoder every client reaches:
// it must never panic; it answers 201 only for one JSON object with known fields, passing the
// backend exactly what was sent; and every refusal is the contract's error body, whose message
// echoes no more than a short prefix of the body.
func FuzzSubmitDecoder(f *testing.F) {
	for _, seed := range []string{
		`{"type": "echo"}`,
		`{"type": "echo", "input": {"a": [1, null, "x"]}, "version": "1.2.0", "idempotency_key": "k", "max_attempts": 2, "timeout": "5s"}`,
		`{"type": "echo", "execution_id": "e", "parent_id": "p"}`,
		`{"type": "echo"} {"type": "echo"}`,
		`{"type": "echo", "colour": "red"}`,
		`{"type": 7}`,
		`[]`,
		`null`,
		``,
		`{"type": "echo", "input": "\ud800"}`,
		`{"type": "echo", "max_attempts": 1e400}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		b := newFake()
		h := New(b, Options{MaxBodyBytes: 4 << 10})
		rec := call(h, "POST", "/v1/tasks", "application/json", string(body))
		switch rec.Code {
		case 201:
			var sent api.SubmitRequest
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&sent); err != nil {
				t.Fatalf("accepted a body strict JSON refuses: %v", err)
			}
			got, _ := json.Marshal(b.gotSubmit)
			want, _ := json.Marshal(sent)
			if !bytes.Equal(got, want) {
				t.Fatalf("backend got %s, body said %s", got, want)
			}
		case 400, 413:
			var e api.Error
			dec := json.NewDecoder(bytes.NewReader(rec.Body.Bytes()))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&e); err != nil || e.Code == "" || e.Message == "" {
				t.Fatalf("error body %q: %v", rec.Body, err)
			}
			if len(e.Message) > 400 || !utf8.ValidString(e.Message) && utf8.Valid(body) {
				t.Fatalf("error message of %d bytes: %q", len(e.Message), e.Message)
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
	})
}

// FuzzQueryGet checks queryGet against url.ParseQuery: the same first value for any query and
// key, escapes, semicolons and repeated keys included.
func FuzzQueryGet(f *testing.F) {
	for _, q := range []string{"", "wait=30s", "a=1&wait=2s&wait=3s", "w%61it=1s", "wait=1%", "wait=1%&wait=2s",
		"wait=1s;x=2&wait=3s", "&&wait", "wait", "wait=a+b", "x=1&=2&wait=%20", strings.Repeat("&", 1200) + "wait=1s"} {
		f.Add(q, "wait")
	}
	f.Fuzz(func(t *testing.T, raw, key string) {
		v, _ := url.ParseQuery(raw)
		if got, want := queryGet(raw, key), v.Get(key); got != want {
			t.Fatalf("queryGet(%q, %q) = %q, url.ParseQuery's is %q", raw, key, got, want)
		}
	})
}

// Reading ?wait allocates nothing for a plain query.
func TestWaitParamAllocatesNothing(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/v1/tasks?wait=30s", nil)
	if d, err := waitParam(r); err != nil || d != 30*time.Second {
		t.Fatalf("waitParam: %v, %v", d, err)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = waitParam(r) }); n != 0 {
		t.Errorf("waitParam: %.0f allocations, want 0", n)
	}
}
