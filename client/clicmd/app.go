package clicmd

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// Exit statuses of every command (docs/flags.md lists them).
const (
	ExitOK      = 0 // done; the task succeeded; the cluster is healthy
	ExitFailed  = 1 // the task failed or was cancelled, the task does not exist, or the cluster has no leader
	ExitRequest = 2 // usage error, or the request failed: unreachable node, refused credential, rejected request
)

// Configure gives app what every taskworker binary shares, whatever its commands: an unknown
// command exits 2 with a suggestion instead of urfave/cli's "No help topic" and status 3, a bad
// flag value exits 2 (a duration without a unit says it needs one), and a `version` command
// prints app.Version as --version does. main.go and custom binaries call it after setting
// Commands and Version.
func Configure(app *cli.App) {
	if app.Version == "" {
		app.Version = "dev"
	}
	if !slices.ContainsFunc(app.Commands, func(c *cli.Command) bool { return c.Name == "version" }) {
		app.Commands = append(app.Commands, versionCommand())
	}
	app.Action = groupAction
	// Reached only by `help NAME` for an unknown NAME, and urfave/cli gives it no error to return.
	app.CommandNotFound = func(c *cli.Context, name string) {
		fmt.Fprintln(c.App.ErrWriter, unknownCommand(c, name))
		cli.OsExiter(ExitRequest)
	}
	app.OnUsageError = func(c *cli.Context, err error, _ bool) error { return usageError(c, "%v", err) }
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, cmd := range cmds {
			if len(cmd.Subcommands) > 0 && cmd.Action == nil {
				cmd.Action = groupAction
			}
			if cmd.OnUsageError == nil {
				cmd.OnUsageError = func(c *cli.Context, err error, _ bool) error { return usageError(c, "%v", err) }
			}
			walk(cmd.Subcommands)
		}
	}
	walk(app.Commands)
}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print this binary's version (a node's own is in `status`)",
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageError(c, "got arguments %q, want none", c.Args().Slice())
			}
			fmt.Fprintf(c.App.Writer, "%s version %s\n", c.App.Name, c.App.Version)
			return nil
		},
	}
}

// groupAction runs for the binary itself and for a command with subcommands (`task`) when no
// subcommand matched: help without arguments, else an unknown command error with exit status 2.
func groupAction(c *cli.Context) error {
	root := c.Command == nil || c.Command.Name == c.App.Name
	if !c.Args().Present() {
		if root {
			return cli.ShowAppHelp(c)
		}
		return cli.ShowSubcommandHelp(c)
	}
	return cli.Exit(unknownCommand(c, c.Args().First()), ExitRequest)
}

// unknownCommand is the message for a command name that c (the binary, or a command with
// subcommands) does not have.
func unknownCommand(c *cli.Context, name string) string {
	cmds, path := c.App.Commands, c.App.Name
	if c.Command != nil && c.Command.Name != c.App.Name && len(c.Command.Subcommands) > 0 {
		cmds, path = c.Command.Subcommands, c.Command.HelpName
	}
	msg := fmt.Sprintf("unknown command %q for %s", name, path)
	if s := suggest(name, cmds); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	return msg + fmt.Sprintf("\nRun '%s --help' for the list of commands.", path)
}

// suggest returns the visible command name (or alias) closest to name by edit distance, when it
// is close enough to be a likely typo or name is a prefix of it; otherwise "".
func suggest(name string, cmds []*cli.Command) string {
	best, bestDist := "", -1
	for _, cmd := range cmds {
		if cmd.Hidden {
			continue
		}
		for _, cand := range cmd.Names() {
			d := levenshtein(name, cand)
			if len(name) >= 2 && strings.HasPrefix(cand, name) {
				d = min(d, 1) // "stat" for status
			}
			if bestDist < 0 || d < bestDist {
				best, bestDist = cand, d
			}
		}
	}
	if bestDist < 0 || bestDist > max(2, len(name)/3) || bestDist >= len(name) {
		return ""
	}
	return best
}

// levenshtein is the edit distance (insertions, deletions, substitutions) between a and b.
func levenshtein(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

// badFlagValue is how package flag reports a value it cannot parse.
var badFlagValue = regexp.MustCompile(`invalid value "([^"]*)" for flag -{1,2}([\w.-]+): .*`)

// explainFlagError rewrites flag's terse parse error for a duration flag of cmd into what the
// value needs: a bare number is the usual mistake (`--timeout 5`), and Go durations need a unit.
func explainFlagError(cmd *cli.Command, msg string) string {
	m := badFlagValue.FindStringSubmatch(msg)
	if m == nil || cmd == nil {
		return msg
	}
	value, name := m[1], m[2]
	i := slices.IndexFunc(cmd.Flags, func(f cli.Flag) bool { return slices.Contains(f.Names(), name) })
	if i < 0 {
		return msg
	}
	if _, ok := cmd.Flags[i].(*cli.DurationFlag); !ok {
		return msg
	}
	if _, err := strconv.ParseFloat(value, 64); err == nil {
		return fmt.Sprintf("--%s needs a unit, e.g. %ss (got %q; units: ms, s, m, h)", name, value, value)
	}
	if _, err := time.ParseDuration(value); err != nil {
		return fmt.Sprintf("--%s takes a duration with a unit, e.g. 5s, 2m or 1h30m (got %q)", name, value)
	}
	return msg
}
