// Package clicmd holds taskworker's client commands (exec, submit, task, status, workers, leave,
// types, join-token, keyring) and its offline tools (tls, keygen) for urfave/cli, built on package
// client and internal/pki. main.go and custom binaries mount them beside the agent.
package clicmd

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client"
	"github.com/taskworker/taskworker/internal/agentcred"
)

// Commands returns the commands that drive a cluster through any node's
// HTTP API. Exit status 2 means a usage or request error; what 1 means depends
// on the command (see CONTRACT.md).
func Commands() []*cli.Command {
	return []*cli.Command{
		execCommand(),
		submitCommand(),
		{
			Name:  "task",
			Usage: "inspect and control tasks",
			Subcommands: []*cli.Command{
				taskGetCommand(), taskListCommand(), taskCancelCommand(), taskLogsCommand(),
				taskRetryCommand(), taskPurgeCommand(),
			},
		},
		statusCommand(),
		workersCommand(),
		leaveCommand(),
		typesCommand(),
		joinTokenCommand(),
		keyringCommand(),
		tlsCommand(),
		keygenCommand(),
		aclCommand(),
		scheduleCommand(),
		workflowCommand(),
		queueCommand(),
		rateLimitCommand(),
	}
}

const inputHelp = `INPUT is JSON text; @FILE reads it from a file and - from stdin; absent means null.`

func execCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:        "exec",
		Usage:       "submit a task, stream its output and print its result",
		ArgsUsage:   "TYPE [INPUT]",
		Description: inputHelp + "\nExit status: 0 succeeded, 1 failed or cancelled, 2 usage or request error.",
		Flags:       submitFlags(),
	}, 1, 2, func(c *cli.Context, api *client.Client, args []string) error {
		req, err := submitRequest(c, args)
		if err != nil {
			return usageError(c, "%v", err)
		}
		// The last non-empty stdout line of each attempt: a command-backed task's result is often
		// that very line, already printed, and is then not printed again.
		lastOut := map[int]string{}
		task, err := api.ExecWith(c.Context, req, client.ExecHooks{
			// The ID comes first, so the task can be found again whatever happens to this command.
			OnSubmit: func(t *client.Task, created bool) {
				switch {
				case created:
					fmt.Fprintf(c.App.ErrWriter, "task %s submitted\n", t.ID)
				case req.DebounceKey != "":
					fmt.Fprintf(c.App.ErrWriter, "debounced: task %s takes this input, and runs once the key was quiet for %s\n",
						t.ID, t.Debounce)
				default:
					fmt.Fprintf(c.App.ErrWriter, "idempotency key seen before: task %s from %s (%s)\n",
						t.ID, formatTime(t.CreatedAt), t.State)
				}
			},
			OnLog: func(l client.LogLine) {
				if line := strings.TrimSpace(l.Line); l.Stream == "stdout" && line != "" {
					lastOut[l.Attempt] = line
				}
				printLog(c, l)
			},
			OnRetry: func(e client.HistoryEntry) {
				fmt.Fprintf(c.App.ErrWriter, "attempt %d %s on %s: %s; retrying\n",
					e.Attempt, e.Event, cmp.Or(e.Node, "-"), cmp.Or(e.Error, "no error recorded"))
			},
			OnMove: func(from, to string, why error) { printMoved(c, from, to, why) },
		})
		if err != nil {
			return cli.Exit(err.Error(), ExitRequest)
		}
		switch task.State {
		case client.StateSucceeded:
			if res := resultText(task.Result); compactJSON(json.RawMessage(lastOut[task.Attempt])) != res {
				fmt.Fprintln(c.App.Writer, res)
			}
			return nil
		case client.StateFailed:
			return cli.Exit(fmt.Sprintf("task %s failed: %s", task.ID, describeError(task.Error)), 1)
		default:
			return cli.Exit(fmt.Sprintf("task %s %s", task.ID, task.State), 1)
		}
	})
}

func submitCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:        "submit",
		Usage:       "submit a task and print its ID",
		ArgsUsage:   "TYPE [INPUT] | --batch FILE",
		Description: inputHelp + "\n\n" + batchHelp,
		Flags: append(submitFlags(), &cli.StringFlag{Name: "batch", TakesFile: true,
			Usage: "submit the tasks of a JSON lines FILE (- for stdin), one request body of POST /v1/tasks per line"}),
	}, 0, 2, func(c *cli.Context, api *client.Client, args []string) error {
		if file := c.String("batch"); file != "" {
			if len(args) > 0 {
				return usageError(c, "--batch takes no TYPE or INPUT: each line of %s names its own", file)
			}
			return submitBatch(c, api, file)
		}
		if len(args) == 0 {
			return usageError(c, "got no arguments, want TYPE [INPUT] or --batch FILE")
		}
		req, err := submitRequest(c, args)
		if err != nil {
			return usageError(c, "%v", err)
		}
		task, _, err := api.Submit(c.Context, req)
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		fmt.Fprintln(c.App.Writer, task.ID)
		return nil
	})
}

const batchHelp = `With --batch FILE, each line of FILE (- for stdin) is one task as the API's submit body,
{"type": "echo", "input": {"x": 1}, "idempotency_key": "k1"}; blank lines are skipped. The tasks go
in batches of 1000 per request. Each accepted task's ID is printed on its own line, in the order of
FILE; a task refused is reported on stderr with its line number, and the exit status is then 2.`

// submitBatch is submit --batch: the tasks of a JSON lines file, in as few requests as the batch
// endpoint allows. Lines are read whole before anything is sent, so a malformed file submits nothing.
func submitBatch(c *cli.Context, api *client.Client, file string) error {
	var in io.Reader = c.App.Reader
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return usageError(c, "%v", err)
		}
		defer f.Close()
		in = f
	}
	reqs, lines, err := readBatch(in)
	if err != nil {
		return usageError(c, "%s: %v", file, err)
	}
	if len(reqs) == 0 {
		return usageError(c, "%s holds no tasks", file)
	}
	results, err := api.SubmitBatch(c.Context, reqs)
	failed := 0
	for i, r := range results {
		if r.Task != nil {
			fmt.Fprintln(c.App.Writer, r.Task.ID)
			continue
		}
		failed++
		fmt.Fprintf(c.App.ErrWriter, "line %d: %v\n", lines[i], r.Error)
	}
	switch {
	case err != nil:
		return cli.Exit(fmt.Sprintf("%v (%d of %d tasks submitted before it)", err, len(results)-failed, len(reqs)), 2)
	case failed > 0:
		return cli.Exit(fmt.Sprintf("%d of %d tasks refused", failed, len(reqs)), 2)
	}
	return nil
}

// readBatch reads JSON lines of submit requests, and the line number of each.
func readBatch(r io.Reader) ([]client.SubmitRequest, []int, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var reqs []client.SubmitRequest
	var lines []int
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		var req client.SubmitRequest
		if err := dec.Decode(&req); err != nil {
			return nil, nil, fmt.Errorf("line %d: %w", n, err)
		}
		if dec.More() {
			return nil, nil, fmt.Errorf("line %d: more than one JSON value", n)
		}
		reqs = append(reqs, req)
		lines = append(lines, n)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read: %w", err)
	}
	return reqs, lines, nil
}

func taskGetCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:      "get",
		Usage:     "show a task",
		ArgsUsage: "ID",
		Flags: []cli.Flag{jsonFlag(), &cli.BoolFlag{Name: "consistent",
			Usage: "read it as the leader holds it (a linearizable read); without, the node asked answers from its replica, which may lag"}},
	}, 1, 1, func(c *cli.Context, api *client.Client, args []string) error {
		if c.Bool("json") {
			var q url.Values
			if c.Bool("consistent") {
				q = url.Values{"consistent": {"true"}}
			}
			raw, err := api.Raw(c.Context, client.TaskPath(args[0]), q)
			if err != nil {
				return taskError(err)
			}
			return printJSON(c, raw)
		}
		get := api.Get
		if c.Bool("consistent") {
			get = api.GetConsistent
		}
		task, err := get(c.Context, args[0])
		if err != nil {
			return taskError(err)
		}
		if err := printTask(c.App.Writer, task); err != nil {
			return cli.Exit(err.Error(), 2)
		}
		return nil
	})
}

func taskListCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:  "list",
		Usage: "list tasks, newest first",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "state", Usage: "only tasks in this state: scheduled, pending, assigned, running, waiting (for child tasks), succeeded, failed or cancelled"},
			&cli.StringFlag{Name: "type", Usage: "only tasks of this type"},
			&cli.StringFlag{Name: "node", Usage: "only tasks on this node"},
			&cli.StringFlag{Name: "execution", Usage: "only tasks of this execution"},
			&cli.StringFlag{Name: "queue", Usage: "only tasks of this queue"},
			&cli.IntFlag{Name: "limit", Usage: "at most this many tasks (0: the server's default)"},
			&cli.StringFlag{Name: "after", Usage: "start after this task ID, to page"},
			&cli.StringFlag{Name: "next", Usage: "the page after this cursor (printed as next: under a page that has one)"},
			jsonFlag(),
		},
	}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
		opts := client.ListOptions{
			State: c.String("state"), Type: c.String("type"), Node: c.String("node"),
			Execution: c.String("execution"), Limit: c.Int("limit"), After: c.String("after"), Next: c.String("next"),
			Queue: c.String("queue"),
		}
		if c.Bool("json") {
			raw, err := api.Raw(c.Context, "/v1/tasks", opts.Values())
			if err != nil {
				return taskError(err)
			}
			return printJSON(c, raw)
		}
		page, err := api.ListPage(c.Context, opts)
		if err != nil {
			return taskError(err)
		}
		tw := table(c.App.Writer, "ID", "TYPE", "STATE", "NODE", "ATTEMPT", "CREATED")
		for _, t := range page.Tasks {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\n",
				t.ID, t.Type, t.State, cmp.Or(t.Node, "-"), t.Attempt, t.MaxAttempts, formatTime(t.CreatedAt))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if page.Next != "" {
			// The hint goes to stderr: the table on stdout stays a table for scripts.
			total := ""
			if page.Total >= 0 {
				total = fmt.Sprintf(" (%d in all)", page.Total)
			}
			fmt.Fprintf(c.App.ErrWriter, "next: %s%s\n", page.Next, total)
		}
		return nil
	})
}

func taskCancelCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:      "cancel",
		Usage:     "cancel a task: a pending one never runs, a running one is stopped",
		ArgsUsage: "ID",
	}, 1, 1, func(c *cli.Context, api *client.Client, args []string) error {
		if err := api.Cancel(c.Context, args[0]); err != nil {
			return taskError(err)
		}
		fmt.Fprintf(c.App.Writer, "Cancel requested for task %s\n", args[0])
		return nil
	})
}

func taskLogsCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:      "logs",
		Usage:     "print a task's output: stdout to stdout, stderr and log lines to stderr",
		ArgsUsage: "ID",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "stream until the task ends"}},
	}, 1, 1, func(c *cli.Context, api *client.Client, args []string) error {
		show := func(l client.LogLine) error {
			printLog(c, l)
			return nil
		}
		var err error
		if c.Bool("follow") {
			// A follow outlives the node it started on: it carries on at another member.
			err = api.Roaming(c.Context, func(from, to string, why error) { printMoved(c, from, to, why) }).
				FollowLogs(c.Context, args[0], show)
		} else {
			err = api.Logs(c.Context, args[0], false, show)
		}
		if err != nil {
			return taskError(err)
		}
		return nil
	})
}

func statusCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:  "status",
		Usage: "show the cluster: leader, nodes, workers and task counts",
		Description: "Exit status: 0 when the cluster has a leader; 1 when it has none (or the node answers 503);\n" +
			"2 when the node cannot be reached, refuses the credential or the request.",
		Flags: []cli.Flag{jsonFlag()},
	}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
		raw, err := api.Raw(c.Context, "/v1/cluster", nil)
		if err != nil {
			return statusError(connectionFlag(c, "addr"), err)
		}
		var cl client.Cluster
		if err := json.Unmarshal(raw, &cl); err != nil {
			return cli.Exit("decode /v1/cluster: "+err.Error(), ExitRequest)
		}
		if c.Bool("json") {
			err = printJSON(c, raw)
		} else {
			err = printCluster(c.App.Writer, &cl, time.Now())
		}
		if err != nil {
			return cli.Exit(err.Error(), ExitRequest)
		}
		if cl.Leader == "" {
			return cli.Exit("no leader: the cluster has not elected one (quorum lost, or an election under way)", ExitFailed)
		}
		return nil
	})
}

// statusError tells apart why status got no cluster view: a node that answers 503 is up but
// has no leader (exit 1); an unreachable node and a refused credential are request errors
// (exit 2), each with its own message, so a script or an operator knows what to fix.
func statusError(addr string, err error) error {
	addr = cmp.Or(addr, defaultAddr)
	var apiErr *client.APIError
	switch {
	case !errors.As(err, &apiErr):
		return cli.Exit(fmt.Sprintf("cannot reach the node at %s: %v", addr, err), ExitRequest)
	case apiErr.StatusCode == http.StatusUnauthorized || apiErr.StatusCode == http.StatusForbidden:
		return cli.Exit(fmt.Sprintf("the node at %s refused the credential (%d): %v; check --token or --token-file",
			addr, apiErr.StatusCode, err), ExitRequest)
	case apiErr.StatusCode == http.StatusServiceUnavailable:
		return cli.Exit(fmt.Sprintf("no leader: the node at %s is not healthy: %v", addr, err), ExitFailed)
	default:
		return cli.Exit(fmt.Sprintf("the node at %s rejected the request: %v", addr, err), ExitRequest)
	}
}

// leavePoll is how often leave asks whether the node has stopped.
const leavePoll = 200 * time.Millisecond

func leaveCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:  "leave",
		Usage: "ask the node at --addr to leave the cluster gracefully, and wait until it has",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "leave even as the last node or when it would break raft quorum (still drains)"},
			&cli.DurationFlag{Name: "wait", Value: 5 * time.Minute, Usage: "how long to wait for the node to stop (0: do not wait)"},
		},
	}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
		if err := api.Leave(c.Context, c.Bool("force")); err != nil {
			return cli.Exit(err.Error(), 2)
		}
		if c.Duration("wait") == 0 {
			fmt.Fprintln(c.App.Writer, "Leave requested")
			return nil
		}
		fmt.Fprintf(c.App.ErrWriter, "Leave requested; waiting for the node at %s to drain and stop\n", c.String("addr"))
		if err := waitGone(c.Context, api, c.Duration("wait")); err != nil {
			return cli.Exit(err.Error(), 2)
		}
		fmt.Fprintln(c.App.Writer, "Node left the cluster")
		return nil
	})
}

func typesCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:  "types",
		Usage: "list the task types the cluster can run",
	}, 0, 0, func(c *cli.Context, api *client.Client, _ []string) error {
		types, err := api.Types(c.Context)
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		slices.SortFunc(types, func(a, b client.TypeInfo) int {
			return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Version, b.Version))
		})
		tw := table(c.App.Writer, "TYPE", "VERSION", "NODES", "DESCRIPTION", "EXAMPLE")
		for _, t := range types {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Type, t.Version, strings.Join(t.Nodes, ","),
				t.Description, compactJSON(t.ExampleInput))
		}
		return tw.Flush()
	})
}

// runFunc is the body of a client command: api talks to the node at --addr,
// args are the positional arguments, already counted.
type runFunc func(c *cli.Context, api *client.Client, args []string) error

// clientCommand completes cmd with the connection flags, exit status 2 for
// usage errors, and flags accepted after positional arguments.
func clientCommand(cmd *cli.Command, minArgs, maxArgs int, run runFunc) *cli.Command {
	return commandWith(connect, cmd, minArgs, maxArgs, run)
}

// operatorCommand is a client command for the operator routes: with no credential given, it
// uses the management credential of the agent it talks to, when it runs on that agent's machine
// as its user (connectOperator).
func operatorCommand(cmd *cli.Command, minArgs, maxArgs int, run runFunc) *cli.Command {
	return commandWith(connectOperator, cmd, minArgs, maxArgs, run)
}

func commandWith(connect func(*cli.Context) (*client.Client, error), cmd *cli.Command, minArgs, maxArgs int, run runFunc) *cli.Command {
	cmd.Flags = append(cmd.Flags, connectionFlags()...)
	cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error { return usageError(c, "%v", err) }
	cmd.Action = func(c *cli.Context) error {
		args, err := positional(c)
		if err != nil {
			return usageError(c, "%v", err)
		}
		if len(args) < minArgs || len(args) > maxArgs {
			return usageError(c, "got arguments %q, want %s", args, cmp.Or(c.Command.ArgsUsage, "none"))
		}
		api, err := connect(c)
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		return run(c, api, args)
	}
	return cmd
}

// The default --addr, and what it becomes when --ca-file or --ca-fingerprint asks for TLS.
const (
	defaultAddr      = "http://127.0.0.1:7948"
	defaultHTTPSAddr = "https://127.0.0.1:7948"
)

// connectionFlags are the flags every client command takes to reach and trust a node.
func connectionFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "addr", EnvVars: []string{"TASKWORKER_ADDR"}, Value: defaultAddr,
			Usage: "HTTP address of any node; https://... for a node serving --http-tls (default " + defaultHTTPSAddr + " with --ca-file or --ca-fingerprint)"},
		&cli.StringFlag{Name: "token", EnvVars: []string{"TASKWORKER_TOKEN"},
			Usage: "access token (an ACL secret, a JWT or the shared --token) when the cluster has access control on (prefer --token-file or the environment: argv is visible in ps)"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"TASKWORKER_TOKEN_FILE"}, TakesFile: true,
			Usage: "read the access token from this file (surrounding white space ignored); --token wins when both are set"},
		&cli.StringFlag{Name: "ca-file", EnvVars: []string{"TASKWORKER_CA_FILE"}, TakesFile: true,
			Usage: "verify the node's HTTPS certificate against the CA certificates in this PEM file"},
		&cli.StringFlag{Name: "ca-fingerprint", EnvVars: []string{"TASKWORKER_CA_FINGERPRINT"},
			Usage: "verify the node's HTTPS certificate by the cluster CA's SHA-256 fingerprint (the middle part of a join token)"},
	}
}

// connectionFlag is the value of a connection flag set (on the command line or by its
// variable) on the command or, failing that, on a parent: `join-token --addr X rotate` must
// reach X, though urfave/cli gives rotate its own --addr with the default value. "" when unset.
func connectionFlag(c *cli.Context, name string) string {
	for _, cc := range c.Lineage() {
		if cc.Command != nil && slices.ContainsFunc(cc.Command.Flags, func(f cli.Flag) bool { return slices.Contains(f.Names(), name) }) &&
			cc.IsSet(name) {
			return cc.String(name)
		}
	}
	return ""
}

// connect makes the client the connection flags describe. A token from --token wins over
// --token-file (its first non-blank line), as Consul's -token wins over -token-file.
func connect(c *cli.Context) (*client.Client, error) {
	token, err := flagToken(c)
	if err != nil {
		return nil, err
	}
	return connectWith(c, token)
}

// connectOperator is connect for the operator commands: without --token, --token-file or their
// variables, the token is the management credential of the agent at --addr, found as k3s finds
// its kubeconfig: through the pointer that agent wrote in this user's config dir, or in
// $TASKWORKER_DATA_DIR (agentcred). The file is readable by the agent's user only, so running
// as that user on its machine is what grants it.
func connectOperator(c *cli.Context) (*client.Client, error) {
	token, err := flagToken(c)
	if err != nil {
		return nil, err
	}
	if token == "" {
		if token, _, err = agentcred.Find(cmp.Or(connectionFlag(c, "addr"), defaultAddr)); err != nil {
			return nil, err
		}
	}
	return connectWith(c, token)
}

// flagToken is the token --token or --token-file (or their variables) give, "" for none.
func flagToken(c *cli.Context) (string, error) {
	token := connectionFlag(c, "token")
	if path := connectionFlag(c, "token-file"); token == "" && path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("read --token-file: %w", err)
		}
		line, _, _ := strings.Cut(strings.TrimLeft(string(b), " \t\r\n"), "\n")
		if token = strings.TrimSpace(line); token == "" {
			return "", fmt.Errorf("--token-file %s is empty", path)
		}
	}
	return token, nil
}

func connectWith(c *cli.Context, token string) (*client.Client, error) {
	var opts []client.Option
	if token != "" {
		opts = append(opts, client.WithToken(token))
	}
	caFile, fingerprint := connectionFlag(c, "ca-file"), connectionFlag(c, "ca-fingerprint")
	if caFile != "" {
		opts = append(opts, client.WithCAFile(caFile))
	}
	if fingerprint != "" {
		opts = append(opts, client.WithCAFingerprint(fingerprint))
	}
	addr := connectionFlag(c, "addr")
	if addr == "" {
		addr = defaultAddr
		if caFile != "" || fingerprint != "" {
			addr = defaultHTTPSAddr
		}
	}
	api := client.New(addr, opts...)
	if err := api.Err(); err != nil {
		return nil, err
	}
	return api, nil
}

func usageError(c *cli.Context, format string, a ...any) error {
	msg := doubleDash(explainFlagError(c.Command, fmt.Sprintf(format, a...)))
	if c.Command == nil || c.Command.Name == c.App.Name {
		return cli.Exit(fmt.Sprintf("Incorrect Usage: %s\nRun '%s --help' for usage.", msg, c.App.Name), ExitRequest)
	}
	return cli.Exit(fmt.Sprintf("Incorrect Usage: %s\nUsage: %s [options] %s",
		msg, c.Command.HelpName, c.Command.ArgsUsage), ExitRequest)
}

// goFlagName finds the flag names in the errors of Go's flag package, which prints them with one
// dash ("flag provided but not defined: -bogus-flag"); the help and the docs spell long flags
// with two.
var goFlagName = regexp.MustCompile(`(flag provided but not defined: |flag needs an argument: |for flag )-([\w.][\w.-]+)`)

// doubleDash spells the long flag names in a flag error as users type them: --name.
func doubleDash(msg string) string { return goFlagName.ReplaceAllString(msg, "${1}--${2}") }

// taskError is the exit status of a task command that failed: 1 when the task
// does not exist, 2 for any other error.
func taskError(err error) error {
	if client.IsNotFound(err) {
		return cli.Exit(err.Error(), 1)
	}
	return cli.Exit(err.Error(), 2)
}

// positional returns c's positional arguments and applies the command's flags
// found among them: urfave/cli stops parsing flags at the first argument, but
// users write `task logs ID --follow`. Arguments that name no flag of the
// command ("-", "-3") stay positional, and "--" ends the flags.
func positional(c *cli.Context) ([]string, error) {
	set := flag.NewFlagSet(c.Command.Name, flag.ContinueOnError)
	set.SetOutput(io.Discard)
	for _, f := range c.Command.Flags {
		if err := f.Apply(set); err != nil {
			return nil, err
		}
	}
	var args []string
	for rest := c.Args().Slice(); len(rest) > 0; {
		if rest[0] == "--" {
			args = append(args, rest[1:]...)
			break
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(rest[0], "-"), "=")
		f := set.Lookup(name)
		if !strings.HasPrefix(rest[0], "-") || f == nil {
			args, rest = append(args, rest[0]), rest[1:]
			continue
		}
		n := 2 // the flag and its value
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); hasValue || ok && b.IsBoolFlag() {
			n = 1
		}
		n = min(n, len(rest))
		if err := set.Parse(rest[:n]); err != nil {
			return nil, err
		}
		rest = rest[n:]
	}
	var err error
	set.Visit(func(f *flag.Flag) { err = errors.Join(err, c.Set(f.Name, f.Value.String())) })
	return args, err
}

func submitFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "version", Usage: "run this version of the type (default: the newest any node offers)"},
		&cli.StringFlag{Name: "idempotency-key", Usage: "submit at most once per key; a repeat returns the first task"},
		&cli.IntFlag{Name: "max-attempts", Usage: "how many failed executions before the task fails (0: the server's default)"},
		&cli.DurationFlag{Name: "timeout", Usage: "limit on one execution (0: the server's default)"},
	}, append(append(uniqueFlags(), scheduleFlags()...), flowFlags()...)...)
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print the HTTP API's JSON"}
}

func submitRequest(c *cli.Context, args []string) (client.SubmitRequest, error) {
	input, err := readInput(c.App.Reader, args[1:])
	if err != nil {
		return client.SubmitRequest{}, err
	}
	req := client.SubmitRequest{
		Type:           args[0],
		Input:          input,
		Version:        c.String("version"),
		IdempotencyKey: c.String("idempotency-key"),
		MaxAttempts:    c.Int("max-attempts"),
	}
	if d := c.Duration("timeout"); d > 0 {
		req.Timeout = d.String()
	}
	applyUnique(c, &req)
	applyFlow(c, &req)
	return req, applySchedule(c, &req)
}

// readInput returns the task input named by the optional INPUT argument:
// JSON text, @FILE, - for stdin, or null when absent.
func readInput(stdin io.Reader, args []string) (json.RawMessage, error) {
	if len(args) == 0 {
		return json.RawMessage("null"), nil
	}
	arg, text := args[0], []byte(args[0])
	var err error
	switch {
	case arg == "-":
		text, err = io.ReadAll(stdin)
	case strings.HasPrefix(arg, "@"):
		text, err = os.ReadFile(arg[1:])
	}
	if err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	var v any
	if err := json.Unmarshal(text, &v); err != nil {
		return nil, fmt.Errorf("input is not JSON (a string needs quotes: '\"text\"'): %w", err)
	}
	return json.RawMessage(bytes.TrimSpace(text)), nil
}

// printLog writes a task's output line where the task wrote it; log lines go
// to stderr, led by their level.
func printLog(c *cli.Context, l client.LogLine) {
	line := strings.TrimSuffix(l.Line, "\n")
	switch l.Stream {
	case "stdout":
		fmt.Fprintln(c.App.Writer, line)
	case "stderr":
		fmt.Fprintln(c.App.ErrWriter, line)
	default:
		fmt.Fprintf(c.App.ErrWriter, "%-5s %s\n", strings.ToUpper(cmp.Or(l.Level, "info")), line)
	}
}

// printMoved tells the user on stderr that the node went away and the command carries on at another.
func printMoved(c *cli.Context, from, to string, why error) {
	fmt.Fprintf(c.App.ErrWriter, "node %s went away (%v); carrying on at %s\n", from, why, to)
}

func describeError(e *client.TaskError) string {
	switch {
	case e == nil:
		return "no error recorded"
	case e.Type == "":
		return e.Message
	case e.Final:
		return fmt.Sprintf("%s (%s, final: not retried)", e.Message, e.Type)
	default:
		return fmt.Sprintf("%s (%s)", e.Message, e.Type)
	}
}

// waitGone polls the node until it no longer answers, which is when it has
// left and shut down; any answer, a 503 included, means it is still draining.
func waitGone(ctx context.Context, api *client.Client, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(leavePoll)
	defer tick.Stop()
	for {
		_, err := api.Health(ctx)
		var apiErr *client.APIError
		if ctx.Err() != nil {
			return fmt.Errorf("node still answering after %v: %w", limit, ctx.Err())
		}
		if err != nil && !errors.As(err, &apiErr) {
			return nil
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

func printJSON(c *cli.Context, v any) error {
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return cli.Exit(fmt.Sprintf("print JSON: %v", err), 2)
	}
	return nil
}

func table(w io.Writer, header ...string) *tabwriter.Writer {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	return tw
}

func printCluster(w io.Writer, cl *client.Cluster, now time.Time) error {
	fmt.Fprintf(w, "Leader: %s\n\n", cmp.Or(cl.Leader, "(none)"))
	nodes := slices.Clone(cl.Nodes)
	slices.SortFunc(nodes, func(a, b client.NodeInfo) int { return cmp.Compare(a.Name, b.Name) })
	tw := table(w, "NAME", "GOSSIP", "RAFT", "HTTP", "STATE", "ROLE", "RUNNING/CAPACITY", "DRAINING",
		"VERSION", "UPTIME", "COMMIT", "APPLIED", "LAG")
	for _, n := range nodes {
		// A dead or departed node's load and uptime are the last ones recorded, not facts.
		gone := n.State == client.NodeDead || n.State == client.NodeLeft
		load, uptime := fmt.Sprintf("%d/%d", n.Running, n.Capacity), "-"
		if gone {
			load = "-"
		} else if n.StartedAt != nil {
			uptime = formatUptime(now.Sub(*n.StartedAt))
		}
		lag := "-"
		if n.Lag != nil {
			lag = fmt.Sprint(*n.Lag)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.GossipAddr, n.RaftAddr, n.HTTPAddr,
			n.State, n.RaftRole, load, map[bool]string{true: "yes", false: "no"}[n.Draining],
			cmp.Or(n.Version, "-"), uptime, index(n.CommitIndex), index(n.AppliedIndex), lag)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if len(cl.Workers) > 0 {
		if err := printWorkers(w, cl.Workers); err != nil {
			return err
		}
		fmt.Fprintln(w)
	}
	// The contract's states in life order, then any others the server reports.
	states := []string{client.StatePending, client.StateAssigned, client.StateRunning,
		client.StateSucceeded, client.StateFailed, client.StateCancelled}
	var others []string
	for s := range cl.Tasks {
		if !slices.Contains(states, s) {
			others = append(others, s)
		}
	}
	slices.Sort(others)
	tw = table(w, "TASKS", "COUNT")
	for _, s := range append(states, others...) {
		fmt.Fprintf(tw, "%s\t%d\n", s, cl.Tasks[s])
	}
	return tw.Flush()
}

// index is a raft index for a table cell; 0 means unknown.
func index(i uint64) string {
	if i == 0 {
		return "-"
	}
	return fmt.Sprint(i)
}

// formatUptime is d in its two largest units: 3d4h, 2h13m, 5m12s, 42s.
func formatUptime(d time.Duration) string {
	d = max(d, 0).Truncate(time.Second)
	days, h, m, s := int(d/(24*time.Hour)), int(d/time.Hour)%24, int(d/time.Minute)%60, int(d/time.Second)%60
	switch {
	case days > 0:
		return fmt.Sprintf("%dd%dh", days, h)
	case h > 0:
		return fmt.Sprintf("%dh%dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm%ds", m, s)
	default:
		return fmt.Sprintf("%ds", s)
	}
}

func printTask(w io.Writer, t *client.Task) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(key, value string) {
		if value != "" {
			fmt.Fprintf(tw, "%s\t%s\n", key, value)
		}
	}
	row("ID", t.ID)
	row("Type", fmt.Sprintf("%s (version %s)", t.Type, t.Version))
	row("State", t.State)
	if t.State == client.StatePending {
		row("Pending reason", t.PendingReason)
	}
	row("Queue", t.Queue)
	if t.Priority != 0 {
		row("Priority", fmt.Sprint(t.Priority))
	}
	if t.ConcurrencyKey != "" {
		row("Concurrency", fmt.Sprintf("key %s, at most %d running", t.ConcurrencyKey, t.ConcurrencyLimit))
	}
	if t.RunAt != nil {
		row("Run at", formatTime(*t.RunAt))
	}
	row("Node", cmp.Or(t.Node, "-"))
	row("Attempt", fmt.Sprintf("%d of %d", t.Attempt, t.MaxAttempts))
	row("Timeout", t.Timeout)
	row("Idempotency key", t.IdempotencyKey)
	row("Execution", t.ExecutionID)
	row("Trace", t.TraceID)
	row("Parent", t.ParentID)
	if len(t.WaitFor) > 0 {
		waiting := fmt.Sprintf("%d child tasks", len(t.WaitFor))
		if t.State == client.StateWaiting {
			waiting += fmt.Sprintf(", %d not finished", t.WaitLeft)
		}
		row("Waits for", waiting)
	}
	row("Submitted by", t.SubmittedBy)
	row("Created", formatTime(t.CreatedAt))
	if t.StartedAt != nil {
		row("Started", formatTime(*t.StartedAt))
	}
	if t.FinishedAt != nil {
		row("Finished", formatTime(*t.FinishedAt))
	}
	row("Input", compactJSON(t.Input))
	if t.State == client.StateSucceeded {
		row("Result", resultText(t.Result))
	}
	if t.Error != nil {
		row("Error", describeError(t.Error))
	}
	if err := tw.Flush(); err != nil || len(t.History) == 0 {
		return err
	}
	fmt.Fprintln(w, "\nHistory")
	tw = table(w, "ATTEMPT", "NODE", "EVENT", "AT", "ERROR")
	for _, h := range t.History {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", h.Attempt, h.Node, h.Event, formatTime(h.At), h.Error)
	}
	return tw.Flush()
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.RFC3339)
}

// resultText is a task's result as one line of JSON; a missing one is null.
func resultText(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "null"
	}
	return compactJSON(raw)
}

// compactJSON returns raw on one line, so it fits a table cell.
func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return string(raw)
	}
	return b.String()
}
