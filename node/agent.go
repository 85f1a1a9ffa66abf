package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/internal/acl"
	"github.com/taskworker/taskworker/internal/endpoint"
	"github.com/taskworker/taskworker/internal/limits"
	"github.com/taskworker/taskworker/internal/pki"
	"github.com/taskworker/taskworker/internal/raftnode"
	"github.com/taskworker/taskworker/internal/store"
	"github.com/taskworker/taskworker/internal/telemetry"
	"github.com/taskworker/taskworker/tasks"
)

// AgentOptions customise the agent command of a taskworker binary.
type AgentOptions struct {
	// Version is the build version shown in status.
	Version string
	// Register adds the binary's own task types to the node's registry, beside the built-ins.
	Register func(reg *tasks.Registry) error
}

// AgentCommand is `taskworker agent`: every flag of the contract, mapped onto Config. A custom
// binary mounts it with its own task types (see examples/).
func AgentCommand(opts AgentOptions) *cli.Command {
	hostname, _ := os.Hostname()
	return &cli.Command{
		Name:  "agent",
		Usage: "run a node (bootstraps a new cluster, or joins one with --join)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", EnvVars: []string{"TASKWORKER_NAME"}, Value: hostname, Usage: "unique node name (its raft server ID is made on first start and kept in the data dir)"},
			&cli.StringFlag{Name: "data-dir", EnvVars: []string{"TASKWORKER_DATA_DIR"}, Usage: "raft log, snapshots and local task logs (required unless --dev)"},
			&cli.StringFlag{Name: "gossip-addr", EnvVars: []string{"TASKWORKER_GOSSIP_ADDR"}, Value: "0.0.0.0:7946", Usage: "memberlist bind host:port"},
			&cli.StringFlag{Name: "raft-addr", EnvVars: []string{"TASKWORKER_RAFT_ADDR"}, Value: "0.0.0.0:7947", Usage: "raft transport bind host:port"},
			&cli.StringFlag{Name: "http-addr", EnvVars: []string{"TASKWORKER_HTTP_ADDR"}, Value: "127.0.0.1:7948", Usage: "HTTP API bind host:port"},
			&cli.StringFlag{Name: "advertise", EnvVars: []string{"TASKWORKER_ADVERTISE"}, Usage: "host other nodes use to reach this one (default: first private IP, or the bind host)"},
			&cli.StringSliceFlag{Name: "join", EnvVars: []string{"TASKWORKER_JOIN"}, Usage: "gossip host:port of an existing member, or a DNS name:port that resolves to members (looked up again on each retry); repeatable or comma separated"},
			&cli.IntFlag{Name: "capacity", EnvVars: []string{"TASKWORKER_CAPACITY"}, Value: DefaultCapacity(), DefaultText: fmt.Sprintf("number of CPUs, here %d", DefaultCapacity()), Usage: "tasks this node runs at once, at least 1"},
			&cli.DurationFlag{Name: "drain-timeout", EnvVars: []string{"TASKWORKER_DRAIN_TIMEOUT"}, Value: DefaultDrainTimeout, Usage: "how long a graceful leave waits for running tasks (a duration with a unit, e.g. 30s)"},
			&cli.IntFlag{Name: "voters", EnvVars: []string{"TASKWORKER_VOTERS"}, Value: DefaultVoters, Usage: "raft voters, at least 1 (odd is best: 4 tolerates no more failures than 3); other nodes replicate as non-voters"},
			&cli.StringFlag{Name: "token", EnvVars: []string{"TASKWORKER_TOKEN"}, Usage: "shared secret every API call must carry (Authorization: Bearer); prefer --token-file or the environment: argv is visible in ps"},
			&cli.StringFlag{Name: "token-file", EnvVars: []string{"TASKWORKER_TOKEN_FILE"}, Usage: "file holding the API token (instead of --token)"},
			&cli.StringFlag{Name: "join-token", EnvVars: []string{"TASKWORKER_JOIN_TOKEN"}, Usage: "the cluster's join token (from <data-dir>/join-token of the first node); required to join unless the cluster runs --insecure; prefer --join-token-file or the environment: argv is visible in ps"},
			&cli.StringFlag{Name: "join-token-file", EnvVars: []string{"TASKWORKER_JOIN_TOKEN_FILE"}, Usage: "file holding the cluster's join token (instead of --join-token)"},
			&cli.BoolFlag{Name: "insecure", EnvVars: []string{"TASKWORKER_INSECURE"}, Usage: "node-to-node traffic without encryption or authentication (tests; --dev implies it)"},
			&cli.StringFlag{Name: "tls-cert", EnvVars: []string{"TASKWORKER_TLS_CERT"}, Usage: "operator's node certificate (PEM chain) for raft, internode calls and --http-tls, instead of the cluster CA"},
			&cli.StringFlag{Name: "tls-key", EnvVars: []string{"TASKWORKER_TLS_KEY"}, Usage: "private key of --tls-cert"},
			&cli.StringFlag{Name: "tls-ca", EnvVars: []string{"TASKWORKER_TLS_CA"}, Usage: "CA bundle peers' certificates must chain to (with --tls-cert)"},
			&cli.BoolFlag{Name: "tls-verify-incoming", EnvVars: []string{"TASKWORKER_TLS_VERIFY_INCOMING"}, Usage: "with --http-tls, API clients must present a certificate from the CA"},
			&cli.BoolFlag{Name: "http-tls", EnvVars: []string{"TASKWORKER_HTTP_TLS"}, Usage: "serve the HTTP API over HTTPS with the node's certificate"},
			&cli.StringFlag{Name: "encrypt", EnvVars: []string{"TASKWORKER_ENCRYPT"}, Usage: "gossip encryption key, base64 of 16, 24 or 32 bytes (with --tls-cert; or the first key of a new cluster)"},
			&cli.StringFlag{Name: "encrypt-file", EnvVars: []string{"TASKWORKER_ENCRYPT_FILE"}, Usage: "file holding the gossip encryption key (instead of --encrypt)"},
			&cli.BoolFlag{Name: "acl", EnvVars: []string{"TASKWORKER_ACL"}, Usage: "access control by ACL tokens and policies (then run: taskworker acl bootstrap); the API then ignores --token"},
			&cli.BoolFlag{Name: "allow-anonymous-api", EnvVars: []string{"TASKWORKER_ALLOW_ANONYMOUS_API"}, Usage: "let the API listen beyond loopback without --acl or --token: anyone who reaches the port may then submit, read and cancel tasks (the join token, keyring and digest still need the management credential)"},
			&cli.StringFlag{Name: "acl-jwt-config", EnvVars: []string{"TASKWORKER_ACL_JWT_CONFIG"}, Usage: "with --acl, a JSON file configuring the JWT auth method (public key or JWKS, issuer, audiences, claim mappings)"},
			&cli.StringFlag{Name: "tasks-file", EnvVars: []string{"TASKWORKER_TASKS_FILE"}, Usage: "YAML file declaring command-backed task types (see README)"},
			&cli.StringFlag{Name: "files-dir", EnvVars: []string{"TASKWORKER_FILES_DIR"}, Usage: "the only directory list-directory may read (default: working directory)"},
			&cli.DurationFlag{Name: "retention", EnvVars: []string{"TASKWORKER_RETENTION"}, Value: DefaultRetention, Usage: "how long finished tasks are kept (a duration with a unit, e.g. 24h)"},
			&cli.IntFlag{Name: "max-input-bytes", EnvVars: []string{"TASKWORKER_MAX_INPUT_BYTES"}, Value: limits.DefaultMaxPayloadBytes, Usage: "largest task input accepted (413 input_too_large above it)"},
			&cli.Int64Flag{Name: "output-max-bytes", EnvVars: []string{"TASKWORKER_OUTPUT_MAX_BYTES"}, Value: tasks.DefaultOutputBytes, Usage: "task output this node keeps in all; past it the output of the tasks written to longest ago is removed first"},
			&cli.IntFlag{Name: "max-result-bytes", EnvVars: []string{"TASKWORKER_MAX_RESULT_BYTES"}, Value: limits.DefaultMaxPayloadBytes, Usage: "largest task result kept; a larger one fails the attempt (result_too_large)"},
			&cli.Float64Flag{Name: "checkpoint-rate", EnvVars: []string{"TASKWORKER_CHECKPOINT_RATE"}, Value: limits.DefaultCheckpointsPerSecond, Usage: "checkpoints per second one run may write; more are coalesced to the newest"},
			&cli.IntFlag{Name: "http-max-conns-per-client", EnvVars: []string{"TASKWORKER_HTTP_MAX_CONNS_PER_CLIENT"}, Value: limits.DefaultMaxConnsPerClient, Usage: "open API connections one client address may hold (-1: no cap)"},
			&cli.Float64Flag{Name: "http-rate-limit", EnvVars: []string{"TASKWORKER_HTTP_RATE_LIMIT"}, Usage: "API requests per second per client address, 429 above it (0, the default: no rate limit; the per-client connection cap stays)"},
			&cli.GenericFlag{Name: "pprof", EnvVars: []string{"TASKWORKER_PPROF"}, Value: &pprofFlag{}, Usage: "serve Go's profiler at /debug/pprof/: --pprof on the HTTP API listener, --pprof=127.0.0.1:6060 on a loopback address of its own (default off)"},
			&cli.Uint64Flag{Name: "raft-snapshot-threshold", EnvVars: []string{"TASKWORKER_RAFT_SNAPSHOT_THRESHOLD"}, Value: 8192, Usage: "raft log entries written since the last snapshot that make the node snapshot its state"},
			&cli.DurationFlag{Name: "raft-snapshot-interval", EnvVars: []string{"TASKWORKER_RAFT_SNAPSHOT_INTERVAL"}, Value: 2 * time.Minute, Usage: "how often the node checks whether to snapshot (each check waits a random time between this and twice this)"},
			&cli.StringFlag{Name: "trace-url-template", EnvVars: []string{"TASKWORKER_TRACE_URL_TEMPLATE"}, Usage: "the console's link from a task to its trace: an http or https URL with {trace_id} in it, such as http://jaeger:16686/trace/{trace_id} (tracing itself is configured by the OTEL_* variables)"},
			&cli.StringFlag{Name: "min-free-disk", EnvVars: []string{"TASKWORKER_MIN_FREE_DISK"}, Value: DefaultMinFreeDisk, Usage: "free space on the data dir's file system below which the node warns (log and metric) before the disk fills; a size such as 256MiB or 1GB, 0 for no warning"},
			&cli.IntFlag{Name: "max-pending", EnvVars: []string{"TASKWORKER_MAX_PENDING"}, Value: endpoint.DefaultMaxPending, Usage: "tasks waiting to run (pending or delayed) the cluster holds at most; a submit past it gets 429 queue_full (-1: no cap)"},
			&cli.IntFlag{Name: "quota-pending", EnvVars: []string{"TASKWORKER_QUOTA_PENDING"}, Value: endpoint.DefaultQuotaPending, Usage: "tasks waiting to run one principal may have, unless its ACL policies set a quota (-1: no cap)"},
			&cli.IntFlag{Name: "quota-schedules", EnvVars: []string{"TASKWORKER_QUOTA_SCHEDULES"}, Value: endpoint.DefaultQuotaSchedules, Usage: "schedules one principal may have, unless its ACL policies set a quota (-1: no cap)"},
			&cli.DurationFlag{Name: "quota-schedule-interval", EnvVars: []string{"TASKWORKER_QUOTA_SCHEDULE_INTERVAL"}, Value: endpoint.DefaultQuotaScheduleEvery, Usage: "shortest time between two ticks of a schedule, unless the principal's ACL policies set a quota"},
			&cli.IntFlag{Name: "quota-schedule-input-bytes", EnvVars: []string{"TASKWORKER_QUOTA_SCHEDULE_INPUT_BYTES"}, Value: endpoint.DefaultQuotaScheduleInput, Usage: "largest input of a schedule, unless the principal's ACL policies set a quota (-1: no cap but --max-input-bytes)"},
			&cli.IntFlag{Name: "quota-retained", EnvVars: []string{"TASKWORKER_QUOTA_RETAINED"}, Value: endpoint.DefaultQuotaRetained, Usage: "finished tasks of one principal kept; past it its oldest finished are removed first, unless its ACL policies set a quota (-1: no cap but --retention)"},
			&cli.BoolFlag{Name: "dev", Usage: "single throwaway node on 127.0.0.1 with a temporary data dir (refuses --data-dir and --join)"},
			&cli.StringFlag{Name: "log-level", EnvVars: []string{"TASKWORKER_LOG_LEVEL"}, Value: "info", Usage: "debug|info|warn|error"},
			&cli.BoolFlag{Name: "log-json", EnvVars: []string{"TASKWORKER_LOG_JSON"}, Usage: "log JSON lines"},
		},
		Action: func(c *cli.Context) error { return runAgent(c, opts) },
	}
}

func runAgent(c *cli.Context, opts AgentOptions) error {
	// Before anything is created: raft and the libraries under it ask for 0644/0755.
	raftnode.SetPrivateUmask()
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return cli.Exit("invalid --log-level: "+c.String("log-level"), 2)
	}
	logger := telemetry.NewLogger(os.Stderr, level, c.Bool("log-json"))
	warnSecretsInArgv(os.Args[1:], logger.With("node", c.String("name")))

	filesDir := c.String("files-dir")
	if filesDir == "" {
		filesDir, _ = os.Getwd()
	}
	reg, err := tasks.NewBuiltinRegistry(filesDir)
	if err != nil {
		return cli.Exit("register built-in tasks: "+err.Error(), 1)
	}
	if f := c.String("tasks-file"); f != "" {
		if err := tasks.RegisterTaskFile(reg, f); err != nil {
			return cli.Exit("tasks file: "+err.Error(), 2)
		}
		warnRootCommands(f, os.Geteuid(), logger.With("node", c.String("name")))
	}
	if opts.Register != nil {
		if err := opts.Register(reg); err != nil {
			return cli.Exit("register task types: "+err.Error(), 1)
		}
	}
	var join []string
	for _, j := range c.StringSlice("join") {
		for _, p := range strings.Split(j, ",") {
			if p = strings.TrimSpace(p); p != "" {
				join = append(join, p)
			}
		}
	}
	// Problems with the flags themselves, reported with Config.Validate's below.
	var problems []error
	token, err := apiToken(c, logger)
	if err != nil {
		problems = append(problems, err)
	}
	joinToken, err := joinTokenFlag(c)
	if err != nil {
		problems = append(problems, err)
	}
	var gossipKey []byte
	switch {
	case c.String("encrypt") != "" && c.String("encrypt-file") != "":
		problems = append(problems, errors.New("--encrypt and --encrypt-file: pass one"))
	case c.String("encrypt") != "":
		if gossipKey, err = pki.DecodeGossipKey(c.String("encrypt")); err != nil {
			problems = append(problems, fmt.Errorf("--encrypt: %w", err))
		}
	case c.String("encrypt-file") != "":
		if gossipKey, err = pki.ReadGossipKeyFile(c.String("encrypt-file")); err != nil {
			problems = append(problems, fmt.Errorf("--encrypt-file: %w", err))
		}
	}
	cfg := Config{
		Name: c.String("name"), DataDir: c.String("data-dir"),
		GossipAddr: c.String("gossip-addr"), RaftAddr: c.String("raft-addr"), HTTPAddr: c.String("http-addr"),
		Advertise: c.String("advertise"), Join: join, Capacity: c.Int("capacity"),
		DrainTimeout: c.Duration("drain-timeout"), Voters: c.Int("voters"), Registry: reg,
		MaxInputBytes: c.Int("max-input-bytes"), MaxResultBytes: c.Int("max-result-bytes"), CheckpointRate: c.Float64("checkpoint-rate"),
		OutputMaxBytes:    c.Int64("output-max-bytes"),
		MaxConnsPerClient: c.Int("http-max-conns-per-client"), RateLimit: c.Float64("http-rate-limit"),
		Retention: c.Duration("retention"), Token: token, Logger: logger, LogLevel: level, Version: opts.Version,
		Insecure: c.Bool("insecure"), JoinToken: joinToken, GossipKey: gossipKey,
		TLSCertFile: c.String("tls-cert"), TLSKeyFile: c.String("tls-key"), TLSCAFile: c.String("tls-ca"),
		TLSVerifyIncoming: c.Bool("tls-verify-incoming"), HTTPTLS: c.Bool("http-tls"),
		MinFreeDisk: c.String("min-free-disk"), TraceURLTemplate: c.String("trace-url-template"),
		RaftSnapshotThreshold: c.Uint64("raft-snapshot-threshold"), RaftSnapshotInterval: c.Duration("raft-snapshot-interval"),
		Quota: endpoint.QuotaConfig{MaxPending: c.Int("max-pending"), Pending: c.Int("quota-pending"), Schedules: c.Int("quota-schedules"),
			ScheduleMinInterval: c.Duration("quota-schedule-interval"), ScheduleInputBytes: c.Int("quota-schedule-input-bytes"), Retained: c.Int("quota-retained")},
		// The node logged why at ERROR; raft cannot go on past what it could not read or save.
		OnFatal: func(error) { os.Exit(1) },
	}
	if p, ok := c.Generic("pprof").(*pprofFlag); ok {
		cfg.Pprof = p.v
	}
	if r := c.Float64("http-rate-limit"); r < 0 {
		problems = append(problems, fmt.Errorf("%w: --http-rate-limit must be 0 (off) or positive, got %v", ErrInvalidConfig, r))
	}
	cfg.ACL = c.Bool("acl")
	cfg.AllowAnonymousAPI = c.Bool("allow-anonymous-api")
	if f := c.String("acl-jwt-config"); f != "" {
		m, err := acl.LoadJWTMethod(f)
		if err != nil {
			problems = append(problems, fmt.Errorf("--acl-jwt-config: %w", err))
		} else {
			cfg.JWT = m
		}
	}
	if c.Bool("dev") {
		cfg.Dev = true
		// Loopback unless told otherwise: a dev node is not reachable from elsewhere.
		if !c.IsSet("gossip-addr") {
			cfg.GossipAddr = "127.0.0.1:7946"
		}
		if !c.IsSet("raft-addr") {
			cfg.RaftAddr = "127.0.0.1:7947"
		}
	}
	// Every problem at once, one a line (Config.Validate is the one place that judges a config).
	if err := errors.Join(append(problems, cfg.Validate())...); err != nil {
		return cli.Exit(err.Error(), 2)
	}
	n, err := Start(cfg)
	if errors.Is(err, store.ErrCorrupt) {
		return cli.Exit("", 1) // Start logged it, in one ERROR line that says how to recover
	}
	if err != nil {
		return cli.Exit("start node: "+err.Error(), 1)
	}
	defer n.trust.PublishCLIPointer(n.cfg.HTTPAddr, n.HTTPAddr())()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if err := n.trust.Reload(); err != nil {
				logger.Warn("SIGHUP: TLS files not reloaded", "err", err, "node", cfg.Name)
			}
		}
	}()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	select {
	case sig := <-sigs:
		logger.Info("signal received: leaving gracefully (send again to exit at once)", "signal", sig.String(), "node", cfg.Name)
		if err := n.Leave(context.Background(), true); err != nil {
			logger.Error("leave", "err", err)
		}
	case <-n.Done():
	}
	select {
	case <-n.Done():
		if err := n.Err(); err != nil {
			return cli.Exit("", 1) // the node logged why, in one ERROR line
		}
		logger.Info("node stopped", "node", cfg.Name)
		return nil
	case sig := <-sigs:
		logger.Warn("second signal: exiting now", "signal", sig.String(), "node", cfg.Name)
		os.Exit(1)
	}
	return nil
}

// apiToken is the shared API token from --token-file or --token (TASKWORKER_TOKEN); one in argv
// gets a warning (warnSecretsInArgv).
func apiToken(c *cli.Context, logger *slog.Logger) (string, error) {
	if f := c.String("token-file"); f != "" {
		if c.String("token") != "" {
			return "", errors.New("--token and --token-file: pass one")
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("--token-file %s is empty", f)
		}
		return tok, nil
	}
	return c.String("token"), nil
}

// joinTokenFlag is the join token from --join-token-file or --join-token (TASKWORKER_JOIN_TOKEN).
func joinTokenFlag(c *cli.Context) (string, error) {
	f := c.String("join-token-file")
	if f == "" {
		return c.String("join-token"), nil
	}
	if c.String("join-token") != "" {
		return "", errors.New("--join-token and --join-token-file: pass one")
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return "", fmt.Errorf("--join-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("--join-token-file %s is empty", f)
	}
	return tok, nil
}

// secretFlags are the agent's flags whose value is a secret, each with the ways to pass it that
// other users cannot read.
var secretFlags = []struct{ flag, instead string }{
	{"--join-token", "--join-token-file or TASKWORKER_JOIN_TOKEN"},
	{"--token", "--token-file or TASKWORKER_TOKEN"},
	{"--encrypt", "--encrypt-file or TASKWORKER_ENCRYPT"},
}

// warnSecretsInArgv warns once for each secret flag given on the command line: every user of the
// machine reads argv (ps, /proc/PID/cmdline). The same value from the environment or a file is
// not in argv, so only args is looked at.
func warnSecretsInArgv(args []string, logger *slog.Logger) {
	for _, s := range secretFlags {
		for _, a := range args {
			if a == "--" {
				break
			}
			name, _, _ := strings.Cut(a, "=")
			if name == s.flag || name == s.flag[1:] { // the cli package takes -flag too
				logger.Warn(s.flag + " on the command line is visible to every user of this machine (ps, /proc); use " + s.instead)
				break
			}
		}
	}
}

// warnRootCommands warns when an agent running as root declares command task types that run
// without a user: of their own: such a command runs as root and reads the agent's environment
// and data dir.
func warnRootCommands(tasksFile string, euid int, logger *slog.Logger) {
	if euid != 0 {
		return
	}
	specs, err := tasks.LoadTaskFile(tasksFile)
	if err != nil {
		return // registered above from the same file: not reached
	}
	var asRoot []string
	for _, s := range specs {
		if s.User == "" {
			asRoot = append(asRoot, s.Name)
		}
	}
	if len(asRoot) > 0 {
		logger.Warn("the agent runs as root and these command task types have no user: in "+tasksFile+
			", so they run as root and can read the agent's secrets; give each a user:", "types", strings.Join(asRoot, ","))
	}
}

// pprofFlag is --pprof: alone (a boolean flag to the flag package) it means the API listener,
// with a value a loopback host:port of its own; true and false are accepted too, for
// TASKWORKER_PPROF. Config.Validate judges the address.
type pprofFlag struct{ v string }

func (f *pprofFlag) IsBoolFlag() bool { return true }

func (f *pprofFlag) String() string {
	if f == nil {
		return ""
	}
	return f.v
}

func (f *pprofFlag) Set(s string) error {
	switch s {
	case "", "false", "0", "off":
		f.v = ""
	case "true", "1", "on", PprofOnAPI:
		f.v = PprofOnAPI
	default:
		f.v = s
	}
	return nil
}
