package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// countFSM is the cheapest state machine: it counts entries. The baseline measures raft and its
// log store, not an application.
type countFSM struct{ n atomic.Uint64 }

func (f *countFSM) Apply(*raft.Log) any { f.n.Add(1); return nil }

func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) { return countSnap(f.n.Load()), nil }

func (f *countFSM) Restore(rc io.ReadCloser) error { return rc.Close() }

type countSnap uint64

func (countSnap) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (countSnap) Release()                             {}

// baseline runs a bare 3-node hashicorp/raft cluster in this process, on 127.0.0.1 TCP
// transports with raft-boltdb/v2 log stores in dir (fsync on; bbolt with NoFreelistSync and the
// map freelist, as taskworker opens its own), and returns the applies per second that callers
// concurrent goroutines reach with cmdBytes-byte commands over d. It is the ceiling a
// taskworker submit (one raft entry each) is compared with, measured on the same machine in the
// same run. It also returns the CPU this process used per apply meanwhile (three raft nodes
// and their callers: the floor of a cluster's CPU per entry on this machine).
func baseline(dir string, callers, cmdBytes int, d time.Duration) (float64, time.Duration, error) {
	type member struct {
		r     *raft.Raft
		trans *raft.NetworkTransport
		store *raftboltdb.BoltStore
	}
	var members []member
	defer func() {
		for _, m := range members {
			_ = m.r.Shutdown().Error()
			_ = m.trans.Close()
			_ = m.store.Close()
		}
	}()
	logger := hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off})
	var servers []raft.Server
	type parts struct {
		conf  *raft.Config
		store *raftboltdb.BoltStore
		snaps raft.SnapshotStore
		trans *raft.NetworkTransport
	}
	var ps []parts
	for i := 0; i < 3; i++ {
		d := filepath.Join(dir, fmt.Sprintf("raft%d", i+1))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, 0, fmt.Errorf("baseline dir: %w", err)
		}
		store, err := raftboltdb.New(raftboltdb.Options{
			Path:        filepath.Join(d, "raft.db"),
			BoltOptions: &bbolt.Options{Timeout: 5 * time.Second, NoFreelistSync: true, FreelistType: bbolt.FreelistMapType},
		})
		if err != nil {
			return 0, 0, fmt.Errorf("baseline store: %w", err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(d, 2, logger)
		if err != nil {
			_ = store.Close()
			return 0, 0, fmt.Errorf("baseline snapshots: %w", err)
		}
		trans, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 3, 10*time.Second, logger)
		if err != nil {
			_ = store.Close()
			return 0, 0, fmt.Errorf("baseline transport: %w", err)
		}
		conf := raft.DefaultConfig()
		conf.LocalID = raft.ServerID(fmt.Sprintf("r%d", i+1))
		conf.Logger = logger
		ps = append(ps, parts{conf, store, snaps, trans})
		servers = append(servers, raft.Server{ID: conf.LocalID, Address: trans.LocalAddr()})
	}
	for i, p := range ps {
		if i == 0 {
			if err := raft.BootstrapCluster(p.conf, p.store, p.store, p.snaps, p.trans, raft.Configuration{Servers: servers}); err != nil {
				return 0, 0, fmt.Errorf("baseline bootstrap: %w", err)
			}
		}
		r, err := raft.NewRaft(p.conf, &countFSM{}, p.store, p.store, p.snaps, p.trans)
		if err != nil {
			return 0, 0, fmt.Errorf("baseline raft: %w", err)
		}
		members = append(members, member{r, p.trans, p.store})
	}
	var leader *raft.Raft
	deadline := time.Now().Add(30 * time.Second)
	for leader == nil {
		for _, m := range members {
			if m.r.State() == raft.Leader {
				leader = m.r
			}
		}
		if leader == nil {
			if time.Now().After(deadline) {
				return 0, 0, errors.New("baseline: no leader in 30s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	cmd := make([]byte, cmdBytes)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var applied atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	cpu0 := processCPU()
	start := time.Now()
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if err := leader.Apply(cmd, 10*time.Second).Error(); err != nil {
					errOnce.Do(func() { firstErr = err })
					return
				}
				applied.Add(1)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	cpu := processCPU() - cpu0
	if firstErr != nil {
		return 0, 0, fmt.Errorf("baseline apply: %w", firstErr)
	}
	n := max(applied.Load(), 1)
	return float64(n) / wall.Seconds(), cpu / time.Duration(n), nil
}

// processCPU is this process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
