package clicmd

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client"
)

const workflowExit = "Exit status: 0 done, 1 not found or refused, 2 usage or request error."

const workflowHelp = `A workflow is a graph of steps, each a task; a step runs once every step it depends on has succeeded.
The file is the body of POST /v1/workflows, for example:
  {"name": "thumbs", "on_failure": "cancel", "steps": [
    {"name": "a", "type": "calc-square", "input": 3},
    {"name": "b", "type": "calc-square", "depends_on": ["a"], "input_from": "a"}]}
input_from takes a parent's result as the step's input: "a", "a#/json/pointer", or ["a", "b"] and "*"
for an object of several results by step name. on_failure: cancel (default) stops the workflow when a
step fails; continue runs the steps that do not depend on it.
` + workflowExit

func workflowCommand() *cli.Command {
	return groupCommand(&cli.Command{
		Name:        "workflow",
		Usage:       "graphs of tasks that pass results along: submit, get, list and cancel workflows",
		Description: workflowHelp,
		Flags:       connectionFlags(),
		Subcommands: []*cli.Command{
			clientCommand(&cli.Command{
				Name: "submit", Usage: "submit a workflow from a JSON file and print its ID", Description: workflowHelp,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "the workflow's JSON (- for stdin)", Required: true},
					jsonFlag(),
				},
			}, 0, 0, workflowSubmit),
			clientCommand(&cli.Command{
				Name: "get", Usage: "show a workflow and its steps", ArgsUsage: "ID", Description: workflowExit,
				Flags: []cli.Flag{jsonFlag()},
			}, 1, 1, workflowGet),
			clientCommand(&cli.Command{
				Name: "list", Usage: "list workflows, newest first", Description: workflowExit,
				Flags: []cli.Flag{
					&cli.IntFlag{Name: "limit", Usage: "at most this many (0: the server's default)"},
					&cli.StringFlag{Name: "after", Usage: "start after this workflow ID, to page"},
					jsonFlag(),
				},
			}, 0, 0, workflowList),
			clientCommand(&cli.Command{
				Name: "cancel", Usage: "cancel every step of a workflow that has not finished", ArgsUsage: "ID", Description: workflowExit,
			}, 1, 1, func(c *cli.Context, cl *client.Client, args []string) error {
				w, err := cl.CancelWorkflow(c.Context, args[0])
				if err != nil {
					return operatorError(err)
				}
				fmt.Fprintf(c.App.Writer, "Workflow %s %s\n", w.ID, w.State)
				return nil
			}),
		},
	})
}

func workflowSubmit(c *cli.Context, cl *client.Client, _ []string) error {
	var src io.Reader = c.App.Reader
	if path := c.String("file"); path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return cli.Exit(err.Error(), 2)
		}
		defer f.Close()
		src = f
	}
	b, err := io.ReadAll(src)
	if err != nil {
		return cli.Exit(err.Error(), 2)
	}
	var req client.WorkflowRequest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return cli.Exit(fmt.Sprintf("the workflow file is not a workflow: %v", err), 2)
	}
	w, err := cl.SubmitWorkflow(c.Context, req)
	if err != nil {
		return operatorError(err)
	}
	if c.Bool("json") {
		return printJSON(c, w)
	}
	fmt.Fprintln(c.App.Writer, w.ID)
	return nil
}

func workflowGet(c *cli.Context, cl *client.Client, args []string) error {
	w, err := cl.Workflow(c.Context, args[0])
	if err != nil {
		return operatorError(err)
	}
	if c.Bool("json") {
		return printJSON(c, w)
	}
	out := c.App.Writer
	fmt.Fprintf(out, "ID:          %s\nName:        %s\nState:       %s\nOn failure:  %s\n", w.ID, orDash(w.Name), w.State, w.OnFailure)
	fmt.Fprintf(out, "Steps:       %d of %d done\n", w.StepsDone, w.StepsTotal)
	if w.Error != "" {
		fmt.Fprintf(out, "Error:       %s\n", w.Error)
	}
	if len(w.Result) > 0 {
		fmt.Fprintf(out, "Result:      %s\n", w.Result)
	}
	tw := table(out, "STEP", "TYPE", "STATE", "TASK", "DEPENDS ON", "RESULT")
	for _, s := range w.Steps {
		deps := "-"
		if len(s.DependsOn) > 0 {
			b, _ := json.Marshal(s.DependsOn)
			deps = string(b)
		}
		res := string(s.Result)
		if s.Error != "" {
			res = "error: " + s.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Type, s.State, orDash(s.TaskID), deps, orDash(res))
	}
	return tw.Flush()
}

func workflowList(c *cli.Context, cl *client.Client, _ []string) error {
	p, err := cl.Workflows(c.Context, c.String("after"), c.Int("limit"))
	if err != nil {
		return operatorError(err)
	}
	if c.Bool("json") {
		return printJSON(c, p)
	}
	tw := table(c.App.Writer, "ID", "NAME", "STATE", "STEPS DONE", "CREATED")
	for _, w := range p.Workflows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\n", w.ID, orDash(w.Name), w.State, w.StepsDone, w.StepsTotal, formatTime(w.CreatedAt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p.Next != "" {
		fmt.Fprintf(c.App.ErrWriter, "next: %s\n", p.Next)
	}
	return nil
}
