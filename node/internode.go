package node

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/taskworker/taskworker/fsm"
	"github.com/taskworker/taskworker/internal/forward"
	"github.com/taskworker/taskworker/internal/httpapi"
	"github.com/taskworker/taskworker/internal/internode"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/raftnode"
	"github.com/taskworker/taskworker/internal/telemetry"
	"github.com/taskworker/taskworker/internal/trust"
	"github.com/taskworker/taskworker/membership"
	"github.com/taskworker/taskworker/tasks"
)

// Errors the HTTP layer branches on.
var (
	ErrNoLeader     = internode.ErrNoLeader
	ErrShuttingDown = internode.ErrShuttingDown
)

// newInternode builds this node's end of the node-to-node channel (internal/internode). Raft must
// be running and trust set up; gossip may start after.
func newInternode(n *Node) *internode.Channel {
	refusals := telemetry.NewPerAddrLimiter(refusalWarnEvery)
	return internode.New(internode.Config{
		Name: n.cfg.Name, Raft: n.rn.Raft(), FSM: n.fsm, Trust: n.trust, Logger: n.log, Done: n.ctx.Done(),
		ApplyTimeout: n.cfg.ApplyTimeout, Metrics: n.metrics, Tracer: n.tracer,
		Leader: n.Leader,
		Members: func() []membership.Member {
			if n.members == nil {
				return nil
			}
			return n.members.Members()
		},
		Alive:        n.aliveNames,
		Announce:     n.rn.Announce,
		ServerIDs:    n.rn.ServerIDs,
		MemberID:     raftnode.MemberID,
		StorageFault: n.rn.StorageFault,
		Admission:    func() *fsm.AdmissionEnv { return n.ep.AdmissionEnv() },
		CheckChild: func(s *fsm.Submit) error {
			if err := n.ep.CheckSubmit(s); err != nil {
				return err
			}
			return n.ep.CheckChild(s)
		},
		AllowWarning: func(key string) (bool, int) { return refusals.Allow(key, time.Now()) },
	})
}

// newForwarder makes the forwarder of the API's writes; its retries last as long as a write may
// take (httpapi's write timeout), and it holds a body up to the largest the API accepts.
func newForwarder(n *Node) *forward.Forwarder {
	return forward.New(n.internode.Forwarding(), forward.Options{
		Retry:     httpapi.DefaultWriteTimeout,
		MaxBody:   max(httpapi.DefaultMaxBatchBodyBytes, n.cfg.MaxBodyBytes) + limits.BodyOverheadBytes,
		Logger:    n.log.With("component", "forward"),
		Abandoned: n.metrics.ForwardAbandoned,
	})
}

// internodeRoutes are the routes of other parts that the channel serves: the API's writes
// forwarded to the leader (alone or in batches), run by the handler the API listener serves (n.api, made before the
// channel serves), the join exchange and the secrets, and this node's task logs.
func internodeRoutes(n *Node) []internode.Route {
	return []internode.Route{
		{Pattern: "POST " + forward.Path, Handler: n.fwd.Serve(n.api)},
		{Pattern: "POST " + forward.BatchPath, Handler: n.fwd.ServeBatch(n.api)},
		{Pattern: "POST " + trust.JoinPath, Handler: http.HandlerFunc(n.trust.HandleJoin), Open: true},
		{Pattern: "GET " + trust.SecretPath, Handler: http.HandlerFunc(n.trust.HandleSecret)},
		{Pattern: internode.LogsPattern, Handler: localLogs(n)},
	}
}

// localLogs serves the lines this node holds for a task as JSON lines; with follow=true and
// attempt=N it streams that attempt's lines until the attempt is over here.
func localLogs(n *Node) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		if r.URL.Query().Get("follow") != "true" {
			lines, err := n.logs.Read(id)
			if err != nil {
				internode.WriteError(w, http.StatusInternalServerError, "internal", err.Error())
				return
			}
			for _, l := range lines {
				_ = enc.Encode(l)
			}
			return
		}
		attempt, err := strconv.Atoi(r.URL.Query().Get("attempt"))
		if err != nil || attempt < 1 {
			internode.WriteError(w, http.StatusBadRequest, "invalid_attempt", "follow needs attempt=N")
			return
		}
		w.WriteHeader(http.StatusOK)
		flusher, _ := w.(http.Flusher)
		n.ep.FollowLocal(r.Context(), id, attempt, func(l tasks.LogLine) {
			_ = enc.Encode(l)
			if flusher != nil {
				flusher.Flush()
			}
		})
	}
}
