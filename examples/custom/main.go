// Command custom is a taskworker binary with its own task types: everything taskworker does, plus
// "word-count" (a typed Go task) and "fan-out" (a task that submits child tasks into its
// execution). Build it, then run it exactly like taskworker:
//
//	go build -o custom ./examples/custom
//	./custom agent --dev
//	./custom exec word-count '{"text": "to be or not to be"}'
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/taskworker/taskworker/client/clicmd"
	"github.com/taskworker/taskworker/node"
	"github.com/taskworker/taskworker/tasks"
)

// WordCountInput is word-count's input; unknown fields and wrong types are rejected at submit.
type WordCountInput struct {
	Text string `json:"text"`
}

// Validate rejects an empty text before the task is accepted.
func (in WordCountInput) Validate() error {
	if strings.TrimSpace(in.Text) == "" {
		return fmt.Errorf("text must not be empty")
	}
	return nil
}

// WordCountResult is word-count's result.
type WordCountResult struct {
	Words    int            `json:"words"`
	Distinct map[string]int `json:"distinct"`
}

func wordCount(ctx *tasks.Context, in WordCountInput) (WordCountResult, error) {
	words := strings.Fields(strings.ToLower(in.Text))
	ctx.Logger.Info("counting words", "words", len(words))
	res := WordCountResult{Words: len(words), Distinct: map[string]int{}}
	for _, w := range words {
		res.Distinct[w]++
	}
	return res, nil
}

// FanOutInput asks for calc-square children of 1..N.
type FanOutInput struct {
	N int `json:"n"`
}

func fanOut(ctx *tasks.Context, in FanOutInput) ([]string, error) {
	var ids []string
	for i := 1; i <= in.N; i++ {
		// The key makes a retried or resumed fan-out find its children instead of doubling them.
		id, err := ctx.Submit(tasks.ChildTask{Type: "calc-square", Input: i, IdempotencyKey: fmt.Sprintf("%s/%d", ctx.TaskID, i)})
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(ctx.Stdout, "submitted child %d: %s\n", i, id)
		ids = append(ids, id)
	}
	return ids, nil
}

func register(reg *tasks.Registry) error {
	for _, h := range []tasks.Handler{
		tasks.Func(tasks.Definition{Name: "word-count", Version: "1", Description: "Counts the words of a text.",
			ExampleInput: []byte(`{"text":"to be or not to be"}`)}, wordCount),
		tasks.Func(tasks.Definition{Name: "fan-out", Version: "1", Description: "Submits calc-square children of 1..n into its execution.",
			ExampleInput: []byte(`{"n":3}`)}, fanOut),
	} {
		if err := reg.Register(h); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	app := &cli.App{
		Name:  "custom",
		Usage: "taskworker with word-count and fan-out",
		Commands: append([]*cli.Command{node.AgentCommand(node.AgentOptions{Version: "custom-1", Register: register})},
			clicmd.Commands()...),
		Version: "custom-1",
	}
	clicmd.Configure(app)
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "custom:", err)
		os.Exit(2)
	}
}
