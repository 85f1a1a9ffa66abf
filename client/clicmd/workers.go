package clicmd

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/api"
	"github.com/taskworker/taskworker/client"
)

func workersCommand() *cli.Command {
	return clientCommand(&cli.Command{
		Name:  "workers",
		Usage: "list the workers (processes outside the agents that run task types): host node, state, load, types, labels",
		Flags: []cli.Flag{jsonFlag()},
	}, 0, 0, func(c *cli.Context, cl *client.Client, _ []string) error {
		if c.Bool("json") {
			raw, err := cl.Raw(c.Context, api.PathWorkers, nil)
			if err != nil {
				return cli.Exit(err.Error(), ExitRequest)
			}
			return printJSON(c, raw)
		}
		ws, err := cl.Workers(c.Context)
		if err != nil {
			return cli.Exit(err.Error(), ExitRequest)
		}
		if len(ws) == 0 {
			fmt.Fprintln(c.App.Writer, "No workers")
			return nil
		}
		if err := printWorkers(c.App.Writer, ws); err != nil {
			return cli.Exit(err.Error(), ExitRequest)
		}
		return nil
	})
}

// printWorkers writes workers as a table sorted by name. A worker that is down or has left
// shows - for its load: the count is the last one recorded, not a fact.
func printWorkers(w io.Writer, ws []client.Worker) error {
	ws = slices.Clone(ws)
	slices.SortFunc(ws, func(a, b client.Worker) int { return cmp.Compare(a.Name, b.Name) })
	tw := table(w, "WORKER", "NODE", "STATE", "DRAINING", "RUNNING/CAPACITY", "TYPES", "LABELS")
	for _, wk := range ws {
		load := fmt.Sprintf("%d/%d", wk.Running, wk.Capacity)
		if wk.State != client.WorkerUp {
			load = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cell(wk.Name), cell(wk.Node), cell(wk.State),
			map[bool]string{true: "yes", false: "no"}[wk.Draining], load, workerTypes(wk.TaskTypes), workerLabels(wk.Labels))
	}
	return tw.Flush()
}

// workerTypes is "type@version,..." in the order the worker registered them; "-" for none.
func workerTypes(ts []client.WorkerType) string {
	out := make([]string, 0, len(ts))
	for _, t := range ts {
		out = append(out, cell(t.Type)+"@"+cell(t.Version))
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

// workerLabels is "key=value,..." sorted by key; "-" for none.
func workerLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return "-"
	}
	out := make([]string, 0, len(labels))
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		out = append(out, cell(k)+"="+cell(labels[k]))
	}
	return strings.Join(out, ",")
}

// cell makes text a worker chose (its name, labels, types) safe for one table cell: white space
// would break the row and control characters would drive the terminal, so any unprintable
// rune is escaped as Go quotes it; "" is "-".
func cell(s string) string {
	if s == "" {
		return "-"
	}
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return r == ' ' || !strconv.IsPrint(r) }) {
		return s
	}
	q := strconv.Quote(s)
	return strings.ReplaceAll(q[1:len(q)-1], " ", `\x20`)
}
