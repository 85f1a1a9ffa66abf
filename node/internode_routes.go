package node

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/trust"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/tasks"
)

// The node-to-node routes: forwarded writes, log reads, a leaving node's removal and the join
// exchange. They are served on the internode listener (the gossip port, internode.go), never on
// the public API, which has no route that accepts raw FSM commands. In secure mode every route
// but join needs a cluster node's certificate.
const (
	internodeApplyPath  = "/v1/internode/apply"
	internodeLogsPath   = "/v1/internode/logs/{id}"
	internodeRemovePath = "/v1/internode/remove/{name}"
	internodeJoinPath   = trust.JoinPath
	// leaderHeader names the leader in a not-leader reply, so a node that is not yet a raft
	// member (a joiner registering) finds the leader without raft.
	leaderHeader = "X-Taskworker-Leader"
	// callerCredentialHeader carries, beside a forwarded command, the credential of the API
	// caller it is for, so the leader authorizes that caller again (authorizeForward).
	callerCredentialHeader = "X-Taskworker-Caller-Credential"
)

// internodeHold holds every internode request while set, as a frozen process would (SIGSTOP):
// the in-process tests' way to freeze a leader's side of forwarding. Nothing sets it outside tests.
type internodeHold struct {
	release atomic.Pointer[chan struct{}] // held until this is closed; nil: serve
	held    atomic.Int64                  // requests that have been held
}

func (h *internodeHold) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ch := h.release.Load(); ch != nil {
			h.held.Add(1)
			select {
			case <-*ch:
			case <-r.Context().Done():
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (n *Node) internodeRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+internodeApplyPath, n.handleInternodeApply)
	mux.HandleFunc("GET "+internodeLogsPath, n.handleLocalLogs)
	mux.HandleFunc("POST "+internodeRemovePath, n.handleInternodeRemove)
	mux.HandleFunc("POST "+internodeJoinPath, n.trust.HandleJoin)
	mux.HandleFunc("GET "+trust.SecretPath, n.trust.HandleSecret)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint: "+api.Truncate(r.Method+" "+r.URL.Path))
	})
	return n.hold.wrap(mux)
}

// writeError writes an error body with the API's shape; the internode routes have codes of their own.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	httpapi.WriteJSON(w, status, api.Error{Message: msg, Code: api.Code(code)})
}

// handleInternodeApply is the leader's side of forwarding.
func (n *Node) handleInternodeApply(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<20))
	if err != nil {
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "command too large")
		return
	}
	c, err := decodeForwarded(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_command", err.Error())
		return
	}
	if err := checkNodeIdentity(c, callerOf(r.Context())); err != nil {
		n.log.Warn("refused a forwarded command", "remote", r.RemoteAddr, "command", c.Type().String(), "reason", err)
		writeError(w, http.StatusForbidden, "forbidden", err.Error())
		return
	}
	if n.raft.State() != raft.Leader {
		w.Header().Set(leaderHeader, n.Leader())
		writeError(w, http.StatusServiceUnavailable, "not_leader", "this node is not the leader")
		return
	}
	if err := n.authorizeForward(c, forwardCaller{credential: r.Header.Get(callerCredentialHeader), node: callerOf(r.Context())}); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if b, ok := c.Body.(*fsm.Register); ok {
		if err := n.checkRegistration(b.Node); err != nil {
			n.log.Warn("refused a registration", "remote", r.RemoteAddr, "reason", err)
			writeError(w, http.StatusConflict, "name_in_use", err.Error())
			return
		}
	}
	if err := n.checkForwardedSchedule(c); err != nil {
		httpapi.WriteError(w, err)
		return
	}
	if b, ok := c.Body.(*fsm.SubmitBatch); ok { // validated again: the follower is not trusted with it
		for i := range b.Items {
			if err := n.checkSubmit(&b.Items[i]); err != nil {
				httpapi.WriteError(w, err)
				return
			}
			if err := n.checkForwardedLineage(&b.Items[i], r.Header.Get(callerCredentialHeader)); err != nil {
				httpapi.WriteError(w, err)
				return
			}
		}
	}
	if err := checkQueueCommand(c); err != nil { // as submits: the follower is not trusted with it
		httpapi.WriteError(w, err)
		return
	}
	res, err := n.applyLocal(r.Context(), c)
	if res == nil {
		if retryable(err) {
			writeError(w, http.StatusServiceUnavailable, "not_leader", err.Error())
			return
		}
		writeError(w, http.StatusInternalServerError, "apply_failed", err.Error())
		return
	}
	out, err := msgpack.Marshal(toWire(res))
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encode", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/msgpack")
	_, _ = w.Write(out)
}

// handleLocalLogs serves the lines this node holds for a task as JSON lines; with follow=true and
// attempt=N it streams that attempt's lines until the attempt is over here.
func (n *Node) handleLocalLogs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	if r.URL.Query().Get("follow") != "true" {
		lines, err := n.logs.Read(id)
		if err != nil {
			writeError(w, http.StatusInternalServerError, "internal", err.Error())
			return
		}
		for _, l := range lines {
			_ = enc.Encode(l)
		}
		return
	}
	attempt, err := strconv.Atoi(r.URL.Query().Get("attempt"))
	if err != nil || attempt < 1 {
		writeError(w, http.StatusBadRequest, "invalid_attempt", "follow needs attempt=N")
		return
	}
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	n.followLocal(r.Context(), id, attempt, func(l tasks.LogLine) {
		_ = enc.Encode(l)
		if flusher != nil {
			flusher.Flush()
		}
	})
}

// handleInternodeRemove is the leader's side of a graceful leave: remove the server from raft.
func (n *Node) handleInternodeRemove(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if caller := callerOf(r.Context()); !caller.may(name) {
		n.log.Warn("refused a raft removal asked by another node", "remote", r.RemoteAddr, "caller", caller.name, "server", name)
		writeError(w, http.StatusForbidden, "forbidden", "a node may only remove itself")
		return
	}
	if !n.IsLeader() {
		writeError(w, http.StatusServiceUnavailable, "not_leader", "this node is not the leader")
		return
	}
	if name == n.cfg.Name {
		writeError(w, http.StatusConflict, "is_leader", "the leader cannot remove itself")
		return
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		writeError(w, http.StatusServiceUnavailable, "remove_failed", err.Error())
		return
	}
	// The servers are raft IDs: every one that belongs to the node goes (none left is success).
	for _, id := range n.serverIDs(cf.Configuration().Servers, name) {
		if err := n.raft.RemoveServer(id, 0, raftChangeTimeout).Error(); err != nil {
			writeError(w, http.StatusServiceUnavailable, "remove_failed", err.Error())
			return
		}
		n.log.Info("removed leaving node from raft", "server", id, "member", name)
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]string{"removed": name})
}

// decodeForwarded reads the body of a forwarded write: one command of a type followers may
// forward. What it returns is all the leader acts on, so it is fuzzed (FuzzInternodeEnvelope).
func decodeForwarded(body []byte) (*fsm.Command, error) {
	c, err := fsm.Decode(body)
	if err != nil {
		return nil, fmt.Errorf("not a forwardable command: %v", api.Truncate(err.Error()))
	}
	if !c.Forwardable() {
		return nil, fmt.Errorf("not a forwardable command: %s", c.Type())
	}
	return c, nil
}

// checkRegistration refuses a registration that would take over the name of a live node: another
// boot of that name, at another gossip address, while gossip says the holder is alive. A node
// restarted (a new boot ID) at its old address, or once its old self is dead, registers as before.
func (n *Node) checkRegistration(rec fsm.Node) error {
	for _, m := range n.members.Members() {
		if m.Name != rec.Name || m.State != membership.StateAlive {
			continue
		}
		if m.Meta.BootID != rec.BootID && m.GossipAddr != rec.GossipAddr {
			return fmt.Errorf("node name %q is in use by a live node at %s (raft ID %s); give each node a unique --name",
				api.Truncate(rec.Name), m.GossipAddr, memberRaftID(m))
		}
	}
	return nil
}
