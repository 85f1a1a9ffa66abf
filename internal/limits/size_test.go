package limits

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/api"
)

func TestCheckSize(t *testing.T) {
	for _, tc := range []struct {
		name        string
		what        Payload
		size, limit int
		wantCode    api.Code // "" = within the cap
	}{
		{name: "input at the default cap", what: PayloadInput, size: DefaultMaxPayloadBytes},
		{name: "input one over the default cap", what: PayloadInput, size: DefaultMaxPayloadBytes + 1, wantCode: CodeInputTooLarge},
		{name: "1 MB input (today's incident)", what: PayloadInput, size: 1 << 20, wantCode: CodeInputTooLarge},
		{name: "result over a configured cap", what: PayloadResult, size: 11, limit: 10, wantCode: CodeResultTooLarge},
		{name: "body over a configured cap", what: PayloadBody, size: 11, limit: 10, wantCode: api.CodeBodyTooLarge},
		{name: "empty", what: PayloadInput, size: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckSize(tc.what, tc.size, tc.limit)
			if tc.wantCode == "" {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			var se *SizeError
			if !errors.As(err, &se) || !errors.Is(err, ErrTooLarge) {
				t.Fatalf("%v is not a *SizeError matching ErrTooLarge", err)
			}
			ae := se.APIError()
			if ae.Code != tc.wantCode || ae.StatusCode != http.StatusRequestEntityTooLarge {
				t.Fatalf("API error %+v, want %s and 413", ae, tc.wantCode)
			}
		})
	}
}

// An oversized body is cut off at the cap and reported as 413 body_too_large, without echoing it.
func TestLimitBodyMapsToBodyTooLarge(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		LimitBody(w, r, 1024)
		var v any
		err := BodyError(json.NewDecoder(r.Body).Decode(&v))
		var se *SizeError
		if errors.As(err, &se) {
			WriteSizeError(w, se)
			return
		}
		if err != nil {
			t.Errorf("decode: %v", err)
		}
	})
	secret := strings.Repeat("x", 4096)
	r := httptest.NewRequest(http.MethodPost, "/v1/tasks", strings.NewReader(`{"type":"echo","input":"`+secret+`"}`))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", w.Code)
	}
	body, _ := io.ReadAll(w.Body)
	var e api.Error
	if err := json.Unmarshal(body, &e); err != nil || e.Code != api.CodeBodyTooLarge {
		t.Fatalf("body %q: %+v %v", body, e, err)
	}
	if strings.Contains(e.Message, "xxxx") {
		t.Fatalf("the error echoes the payload: %q", e.Message)
	}

	small := httptest.NewRequest(http.MethodPost, "/v1/tasks", strings.NewReader(`{"type":"echo"}`))
	w = httptest.NewRecorder()
	h.ServeHTTP(w, small)
	if w.Code != http.StatusOK {
		t.Fatalf("a small body got %d", w.Code)
	}
	if err := BodyError(nil); err != nil {
		t.Fatalf("BodyError(nil) = %v", err)
	}
}
