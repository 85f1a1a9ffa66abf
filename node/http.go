package node

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/tasks"
)

const (
	defaultMaxAttempts = 3
	maxMaxAttempts     = 100
	defaultTimeout     = 30 * time.Second
	maxTimeout         = 7 * 24 * time.Hour
	maxWait            = 10 * time.Minute
	maxKeyLen          = 256
)

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/tasks", n.handleSubmit)
	mux.HandleFunc("GET /v1/tasks", n.handleList)
	mux.HandleFunc("GET /v1/tasks/{id}", n.handleGet)
	mux.HandleFunc("POST /v1/tasks/{id}/cancel", n.handleCancel)
	mux.HandleFunc("GET /v1/tasks/{id}/logs", n.handleLogs)
	mux.HandleFunc("GET /v1/cluster", n.handleCluster)
	mux.HandleFunc("GET /v1/types", n.handleTypes)
	mux.HandleFunc("GET /v1/health", n.handleHealth)
	mux.HandleFunc("POST /v1/agent/leave", n.handleLeave)
	mux.Handle("GET /metrics", n.metricsHandler())
	mux.HandleFunc("POST "+internalApplyPath, n.handleInternalApply)
	mux.HandleFunc("GET /v1/internal/logs/{id}", n.handleLocalLogs)
	mux.HandleFunc("POST "+internalRemovePath, n.handleInternalRemove)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	if n.cfg.Token == "" {
		return mux
	}
	return n.requireToken(mux)
}

// requireToken guards every endpoint but health and metrics with the cluster's shared token,
// sent as "Authorization: Bearer TOKEN": 401 without one, 403 with a wrong one. Nodes send it to
// each other too, so the internal endpoints are closed to anyone without it.
func (n *Node) requireToken(next http.Handler) http.Handler {
	want := []byte(n.cfg.Token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/health" || r.URL.Path == "/metrics" {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		switch {
		case !ok || got == "":
			writeError(w, http.StatusUnauthorized, "unauthorized", "this cluster needs a token: --token or TASKWORKER_TOKEN")
		case subtle.ConstantTimeCompare([]byte(got), want) != 1:
			writeError(w, http.StatusForbidden, "forbidden", "wrong token")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// peerRequest builds a request to another node's HTTP API, carrying the cluster token.
func (n *Node) peerRequest(ctx context.Context, method, addr, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, body)
	if err != nil {
		return nil, err
	}
	if n.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+n.cfg.Token)
	}
	return req, nil
}

type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apiError{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeProposeError maps a failed write to the contract's status codes.
func writeProposeError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrShuttingDown):
		writeError(w, http.StatusServiceUnavailable, "shutting_down", "this node is shutting down")
	case errors.Is(err, context.DeadlineExceeded), retryable(err):
		writeError(w, http.StatusServiceUnavailable, "no_leader", "no cluster leader could apply the request: "+err.Error())
	case errors.Is(err, context.Canceled):
		writeError(w, http.StatusServiceUnavailable, "cancelled", "request cancelled")
	default:
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

// decodeBody reads a JSON request body, enforcing the content type and size cap.
func (n *Node) decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "content type must be application/json, got "+ct)
			return false
		}
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, n.cfg.MaxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body exceeds %d bytes", n.cfg.MaxBodyBytes))
			return false
		}
		writeError(w, http.StatusBadRequest, "invalid_request", "request body is not valid JSON for this endpoint: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "invalid_request", "request body holds more than one JSON value")
		return false
	}
	return true
}

// waitParam parses ?wait=DURATION (0 when absent).
func waitParam(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	s := r.URL.Query().Get("wait")
	if s == "" {
		return 0, true
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		writeError(w, http.StatusBadRequest, "invalid_wait", fmt.Sprintf("wait must be a duration like 30s, got %q", s))
		return 0, false
	}
	return min(d, maxWait), true
}

type submitRequest struct {
	Type           string          `json:"type"`
	Input          json.RawMessage `json:"input"`
	Version        string          `json:"version"`
	IdempotencyKey string          `json:"idempotency_key"`
	MaxAttempts    *int            `json:"max_attempts"`
	Timeout        *fsm.Duration   `json:"timeout"`
	ExecutionID    string          `json:"execution_id"`
	ParentID       string          `json:"parent_id"`
}

func (n *Node) handleSubmit(w http.ResponseWriter, r *http.Request) {
	var req submitRequest
	if !n.decodeBody(w, r, &req) {
		return
	}
	wait, ok := waitParam(w, r)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	item, err := n.submitTask(ctx, &req)
	var se *submitError
	switch {
	case errors.As(err, &se):
		writeError(w, se.status, se.code, se.msg)
		return
	case err != nil:
		writeProposeError(w, err)
		return
	}
	t, ok := n.fsm.Task(item.ID)
	if wait > 0 {
		t, ok = n.waitTask(r.Context(), item.ID, wait, func(t *fsm.Task) bool { return t.State.Terminal() })
	}
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "task "+item.ID+" not found")
		return
	}
	status := http.StatusCreated
	if item.Existing {
		status = http.StatusOK
	}
	writeJSON(w, status, t)
}

// submitError is a submit the client got wrong; it maps to a 4xx.
type submitError struct {
	status    int
	code, msg string
}

func (e *submitError) Error() string { return e.msg }

// submitTask validates a submit, has the leader apply it, and waits until this node's FSM holds
// it. item.Existing reports an idempotency key seen before.
func (n *Node) submitTask(ctx context.Context, req *submitRequest) (fsm.ItemResult, error) {
	sub, status, code, msg := n.prepareSubmit(req)
	if status != 0 {
		return fsm.ItemResult{}, &submitError{status: status, code: code, msg: msg}
	}
	res, err := n.propose(ctx, &fsm.Command{Body: &fsm.SubmitBatch{Items: []fsm.Submit{sub}}})
	if err != nil {
		return fsm.ItemResult{}, err
	}
	item := res.Items[0]
	if errors.Is(item.Err, fsm.ErrDuplicateID) {
		item = fsm.ItemResult{ID: sub.ID} // our own retry after a lost reply: the task is ours
	} else if item.Err != nil {
		return item, &submitError{status: http.StatusBadRequest, code: "invalid_request", msg: item.Err.Error()}
	}
	return item, n.waitIndex(ctx, res.Index)
}

// submitChild is the executor's Submitter: a running task's child joins its execution.
func (n *Node) submitChild(ctx context.Context, parent tasks.RunRef, executionID string, c tasks.ChildTask) (string, error) {
	input, err := json.Marshal(c.Input)
	if err != nil {
		return "", fmt.Errorf("encode child input: %w", err)
	}
	req := submitRequest{Type: c.Type, Input: input, Version: c.Version, IdempotencyKey: c.IdempotencyKey,
		ExecutionID: executionID, ParentID: parent.TaskID}
	if c.MaxAttempts > 0 {
		req.MaxAttempts = &c.MaxAttempts
	}
	if c.Timeout > 0 {
		d := fsm.Duration(c.Timeout)
		req.Timeout = &d
	}
	item, err := n.submitTask(ctx, &req)
	if err != nil {
		return "", fmt.Errorf("submit child %s: %w", c.Type, err)
	}
	return item.ID, nil
}

// prepareSubmit validates a submit and turns it into a command item; a non-zero status is a
// client error to return.
func (n *Node) prepareSubmit(req *submitRequest) (sub fsm.Submit, status int, code, msg string) {
	bad := func(code, msg string) (fsm.Submit, int, string, string) {
		return fsm.Submit{}, http.StatusBadRequest, code, msg
	}
	if req.Type == "" {
		return bad("missing_type", "type is required")
	}
	version, known := n.resolveVersion(req.Type, req.Version)
	if !known {
		return bad("unknown_task_type", fmt.Sprintf("unknown task type %q", req.Type))
	}
	input := req.Input
	if len(input) == 0 {
		input = json.RawMessage("null")
	}
	if h, err := n.cfg.Registry.Lookup(req.Type); err == nil && h.Definition().Version == version {
		if err := h.Validate(input); err != nil {
			return bad("invalid_input", fmt.Sprintf("invalid input for %s: %v", req.Type, err))
		}
	}
	maxAttempts := defaultMaxAttempts
	if req.MaxAttempts != nil {
		maxAttempts = *req.MaxAttempts
	}
	if maxAttempts < 1 || maxAttempts > maxMaxAttempts {
		return bad("invalid_max_attempts", fmt.Sprintf("max_attempts must be between 1 and %d", maxMaxAttempts))
	}
	timeout := defaultTimeout
	if req.Timeout != nil && *req.Timeout != 0 {
		timeout = time.Duration(*req.Timeout)
	}
	if timeout < 0 || timeout > maxTimeout {
		return bad("invalid_timeout", fmt.Sprintf("timeout must be positive and at most %s", maxTimeout))
	}
	if len(req.IdempotencyKey) > maxKeyLen {
		return bad("invalid_idempotency_key", fmt.Sprintf("idempotency_key is longer than %d bytes", maxKeyLen))
	}
	id := ulid.Make().String()
	exec := req.ExecutionID
	if exec == "" {
		exec = id
	}
	return fsm.Submit{
		ID: id, Type: req.Type, Version: version, Input: input, MaxAttempts: maxAttempts,
		Timeout: fsm.Duration(timeout), IdempotencyKey: req.IdempotencyKey, ExecutionID: exec, ParentID: req.ParentID,
	}, 0, "", ""
}

// resolveVersion picks the version for a submit: the pinned one, or the newest offered by an
// alive node (else by any registered node, else by this node's registry). known is false when
// no node has ever offered the type.
func (n *Node) resolveVersion(typ, pinned string) (version string, known bool) {
	alive := n.aliveNames()
	var newestAlive, newestAny string
	for _, nd := range n.fsm.Nodes() {
		for _, ti := range nd.Types {
			if ti.Type != typ {
				continue
			}
			if newestAny == "" || compareVersions(ti.Version, newestAny) > 0 {
				newestAny = ti.Version
			}
			if nd.Status == fsm.NodeUp && !nd.Draining && alive[nd.Name] && (newestAlive == "" || compareVersions(ti.Version, newestAlive) > 0) {
				newestAlive = ti.Version
			}
		}
	}
	if h, err := n.cfg.Registry.Lookup(typ); err == nil && newestAny == "" {
		newestAny = h.Definition().Version
	}
	if newestAny == "" {
		return "", false
	}
	switch {
	case pinned != "":
		return pinned, true
	case newestAlive != "":
		return newestAlive, true
	}
	return newestAny, true
}

// compareVersions orders dotted versions numerically where both parts are numbers.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		ai, aerr := strconv.Atoi(as[i])
		bi, berr := strconv.Atoi(bs[i])
		switch {
		case aerr == nil && berr == nil && ai != bi:
			if ai < bi {
				return -1
			}
			return 1
		case (aerr != nil || berr != nil) && as[i] != bs[i]:
			return strings.Compare(as[i], bs[i])
		}
	}
	return len(as) - len(bs)
}

// waitTask blocks until cond holds for the task, the wait elapses, or the request ends.
func (n *Node) waitTask(ctx context.Context, id string, wait time.Duration, cond func(*fsm.Task) bool) (fsm.Task, bool) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	for {
		t, ok, changed := n.fsm.TaskWatch(id)
		if !ok || cond(&t) {
			return t, ok
		}
		select {
		case <-ctx.Done():
			return t, ok
		case <-changed:
		}
	}
}

func (n *Node) handleGet(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	wait, ok := waitParam(w, r)
	if !ok {
		return
	}
	var index uint64
	if s := r.URL.Query().Get("index"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_index", "index must be a non-negative integer")
			return
		}
		index = v
	}
	var t fsm.Task
	if wait > 0 {
		t, ok = n.waitTask(r.Context(), id, wait, func(t *fsm.Task) bool { return t.ModifyIndex > index })
	} else {
		t, ok = n.fsm.Task(id)
	}
	if !ok {
		writeError(w, http.StatusNotFound, "not_found", "task "+id+" not found")
		return
	}
	w.Header().Set("X-Taskworker-Index", strconv.FormatUint(t.ModifyIndex, 10))
	writeJSON(w, http.StatusOK, t)
}

func (n *Node) handleList(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := fsm.Filter{
		State: fsm.State(q.Get("state")), Type: q.Get("type"), Node: q.Get("node"),
		ExecutionID: q.Get("execution"), After: q.Get("after"), Limit: 100,
	}
	if f.State != "" && !f.State.Valid() {
		writeError(w, http.StatusBadRequest, "invalid_state", fmt.Sprintf("unknown state %q", f.State))
		return
	}
	if s := q.Get("limit"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 10000 {
			writeError(w, http.StatusBadRequest, "invalid_limit", "limit must be between 1 and 10000")
			return
		}
		f.Limit = v
	}
	out := n.fsm.List(f)
	if out == nil {
		out = []fsm.Task{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (n *Node) handleCancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, ok := n.fsm.Task(id); !ok {
		writeError(w, http.StatusNotFound, "not_found", "task "+id+" not found")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	res, err := n.propose(ctx, &fsm.Command{Body: &fsm.Cancel{IDs: []string{id}}})
	if err != nil {
		writeProposeError(w, err)
		return
	}
	switch err := res.Items[0].Err; {
	case errors.Is(err, fsm.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "task "+id+" not found")
		return
	case errors.Is(err, fsm.ErrFinished):
		writeError(w, http.StatusConflict, "already_finished", "task "+id+" has already finished")
		return
	case err != nil:
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	_ = n.waitIndex(ctx, res.Index)
	t, _ := n.fsm.Task(id)
	writeJSON(w, http.StatusAccepted, t)
}

// nodeInfo is one node in GET /v1/cluster.
type nodeInfo struct {
	Name       string         `json:"name"`
	GossipAddr string         `json:"gossip_addr"`
	RaftAddr   string         `json:"raft_addr"`
	HTTPAddr   string         `json:"http_addr"`
	State      string         `json:"state"`
	Draining   bool           `json:"draining"`
	RaftRole   string         `json:"raft_role"`
	Capacity   int            `json:"capacity"`
	Running    int            `json:"running"`
	Version    string         `json:"version"`
	TaskTypes  []fsm.TypeInfo `json:"task_types"`
	BootID     string         `json:"boot_id"`
}

type clusterInfo struct {
	Leader string         `json:"leader"`
	Nodes  []nodeInfo     `json:"nodes"`
	Tasks  map[string]int `json:"tasks"`
}

func (n *Node) clusterInfo() clusterInfo {
	roles := map[string]string{}
	if cf := n.raft.GetConfiguration(); cf.Error() == nil {
		for _, s := range cf.Configuration().Servers {
			roles[string(s.ID)] = "nonvoter"
			if s.Suffrage == 0 { // raft.Voter
				roles[string(s.ID)] = "voter"
			}
		}
	}
	leader := n.Leader()
	if leader != "" {
		roles[leader] = "leader"
	}
	load := n.fsm.Load()
	byName := map[string]*nodeInfo{}
	var order []string
	for _, nd := range n.fsm.Nodes() {
		state := "alive"
		switch nd.Status {
		case fsm.NodeDown:
			state = "dead"
		case fsm.NodeLeft:
			state = "left"
		}
		types := make([]fsm.TypeInfo, 0, len(nd.Types))
		for _, t := range nd.Types {
			types = append(types, fsm.TypeInfo{Type: t.Type, Version: t.Version})
		}
		byName[nd.Name] = &nodeInfo{
			Name: nd.Name, GossipAddr: nd.GossipAddr, RaftAddr: nd.RaftAddr, HTTPAddr: nd.HTTPAddr, State: state,
			Draining: nd.Draining, Capacity: nd.Capacity, Running: load[nd.Name], Version: nd.Version,
			TaskTypes: types, BootID: nd.BootID,
		}
		order = append(order, nd.Name)
	}
	for _, m := range n.members.Members() {
		ni, ok := byName[m.Name]
		if !ok {
			ni = &nodeInfo{Name: m.Name, RaftAddr: m.Meta.RaftAddr, HTTPAddr: m.Meta.HTTPAddr, Capacity: m.Meta.Capacity,
				Version: m.Meta.Version, BootID: m.Meta.BootID, TaskTypes: []fsm.TypeInfo{}}
			byName[m.Name] = ni
			order = append(order, m.Name)
		}
		ni.GossipAddr = m.GossipAddr
		ni.State = string(m.State)
		ni.Draining = ni.Draining || m.Meta.Draining
	}
	info := clusterInfo{Leader: leader, Tasks: map[string]int{}}
	for s, c := range n.fsm.Counts() {
		info.Tasks[string(s)] = c
	}
	sort.Strings(order)
	for _, name := range order {
		ni := byName[name]
		ni.RaftRole = roles[name]
		if ni.RaftRole == "" {
			ni.RaftRole = "none"
		}
		info.Nodes = append(info.Nodes, *ni)
	}
	return info
}

func (n *Node) handleCluster(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, n.clusterInfo())
}

type typeInfo struct {
	Type         string          `json:"type"`
	Version      string          `json:"version"`
	Description  string          `json:"description"`
	ExampleInput json.RawMessage `json:"example_input"`
	Nodes        []string        `json:"nodes"`
	Pending      int             `json:"pending"`
}

func (n *Node) handleTypes(w http.ResponseWriter, r *http.Request) {
	alive := n.aliveNames()
	byKey := map[string]*typeInfo{}
	var keys []string
	add := func(d fsm.TypeInfo) *typeInfo {
		k := d.Type + "\x00" + d.Version
		ti, ok := byKey[k]
		if !ok {
			ti = &typeInfo{Type: d.Type, Version: d.Version, Description: d.Description, ExampleInput: d.ExampleInput, Nodes: []string{}}
			byKey[k] = ti
			keys = append(keys, k)
		}
		return ti
	}
	for _, nd := range n.fsm.Nodes() {
		if nd.Status != fsm.NodeUp || !alive[nd.Name] {
			continue
		}
		for _, d := range nd.Types {
			ti := add(d)
			ti.Nodes = append(ti.Nodes, nd.Name)
		}
	}
	for _, t := range n.fsm.SchedulerView().Pending {
		add(fsm.TypeInfo{Type: t.Type, Version: t.Version}).Pending++
	}
	sort.Strings(keys)
	out := make([]typeInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, *byKey[k])
	}
	writeJSON(w, http.StatusOK, out)
}

func (n *Node) handleHealth(w http.ResponseWriter, r *http.Request) {
	leader := n.Leader()
	if err := n.fsm.Halted(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "halted", "leader": leader, "error": err.Error()})
		return
	}
	_, registered := n.fsm.Node(n.cfg.Name)
	if leader == "" || !registered {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "leader": leader})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "leader": leader})
}
