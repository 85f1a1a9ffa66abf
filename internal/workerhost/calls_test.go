package workerhost

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/taskworker/taskworker/api"
)

// FuzzRegistration decodes a registration as the API does and validates it: nothing panics, and
// what is accepted keeps every bound of docs/workers.md.
func FuzzRegistration(f *testing.F) {
	f.Add([]byte(`{"name": "py1", "capacity": 4, "lease": "1s", "labels": {"zone": "a"},
		"types": [{"type": "py-upper", "version": "1", "description": "upper-cases text", "example_input": "hi"}]}`))
	f.Add([]byte(`{"name": "", "capacity": 0, "types": []}`))
	f.Add([]byte(`{"name": "a", "capacity": 1, "lease": "-1s", "types": [{"type": "x", "version": "1 2"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req api.WorkerRegistration
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if dec.Decode(&req) != nil {
			return
		}
		lease, err := checkRegistration(&req)
		if err != nil {
			if ae, ok := err.(*api.Error); !ok || ae.Code != api.CodeInvalidWorker {
				t.Fatalf("refusal %v is not invalid_worker", err)
			}
			return
		}
		if CheckName(req.Name) != nil || req.Capacity < 1 || req.Capacity > api.MaxWorkerCapacity ||
			lease < api.MinWorkerLease || lease > api.MaxWorkerLease || len(req.Types) < 1 || len(req.Types) > api.MaxWorkerTypes ||
			len(req.Labels) > api.MaxWorkerLabels {
			t.Fatalf("accepted out of bounds: %+v lease %s", req, lease)
		}
		for _, ty := range req.Types {
			if ty.Version == "" || ty.Type == "" || len(ty.Type) > maxTypeNameLen {
				t.Fatalf("accepted type %+v", ty)
			}
		}
	})
}

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{"py1": true, "host-1234.a_b": true, strings.Repeat("a", 64): true,
		"": false, strings.Repeat("a", 65): false, "a b": false, "a/b": false, "é": false, "a\n": false} {
		if got := CheckName(name) == nil; got != ok {
			t.Errorf("CheckName(%q) ok %v, want %v", name, got, ok)
		}
	}
}
