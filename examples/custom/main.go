// Command custom is a taskworker binary with its own task types: everything taskworker does, plus
// "word-count" (a typed Go task), "fan-out" (a task that submits child tasks into its execution)
// and "sum-squares" (a task that submits children, waits for them without holding a slot, and
// adds up their results). Build it, then run it exactly like taskworker:
//
//	go build -o custom ./examples/custom
//	./custom agent --dev
//	./custom exec word-count '{"text": "to be or not to be"}'
package main

import (
	"fmt"
	"os"
	"strings"
	"time"

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

// SumSquaresInput asks for the sum of the squares of 1..N, each computed by a slow-square child
// that takes MS milliseconds.
type SumSquaresInput struct {
	N  int `json:"n"`
	MS int `json:"ms"`
}

// SumSquaresResult is sum-squares' result: the sum, and the children that did not succeed.
type SumSquaresResult struct {
	Sum    int      `json:"sum"`
	Failed []string `json:"failed"`
}

func sumSquares(ctx *tasks.Context, in SumSquaresInput) (SumSquaresResult, error) {
	var ids []string
	for i := 1; i <= in.N; i++ {
		// The key gives a resumed (or retried) run the same children: it names them again.
		id, err := ctx.Submit(tasks.ChildTask{Type: "slow-square", Input: SlowSquareInput{N: i, MS: in.MS},
			IdempotencyKey: fmt.Sprintf("%s/%d", ctx.TaskID, i)})
		if err != nil {
			return SumSquaresResult{}, err
		}
		ids = append(ids, id)
	}
	// Ends this attempt while the children run (the slot is free meanwhile); the task runs again
	// once they have all finished, and this call then returns their outcomes.
	results, err := ctx.WaitChildren(ids...)
	if err != nil {
		return SumSquaresResult{}, err
	}
	res := SumSquaresResult{Failed: []string{}}
	for _, id := range ids {
		var sq int
		if err := results[id].Decode(&sq); err != nil {
			res.Failed = append(res.Failed, id) // a failed child is the parent's to judge
			continue
		}
		res.Sum += sq
	}
	return res, nil
}

// SlowSquareInput is slow-square's input: the number, and how long to take.
type SlowSquareInput struct {
	N  int `json:"n"`
	MS int `json:"ms"`
}

func slowSquare(ctx *tasks.Context, in SlowSquareInput) (int, error) {
	select {
	case <-time.After(time.Duration(in.MS) * time.Millisecond):
		return in.N * in.N, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

func register(reg *tasks.Registry) error {
	for _, h := range []tasks.Handler{
		tasks.Func(tasks.Definition{Name: "word-count", Version: "1", Description: "Counts the words of a text.",
			ExampleInput: []byte(`{"text":"to be or not to be"}`)}, wordCount),
		tasks.Func(tasks.Definition{Name: "fan-out", Version: "1", Description: "Submits calc-square children of 1..n into its execution.",
			ExampleInput: []byte(`{"n":3}`)}, fanOut),
		tasks.Func(tasks.Definition{Name: "sum-squares", Version: "1", Description: "Sums the squares of 1..n, each from a slow-square child it waits for.",
			ExampleInput: []byte(`{"n":3,"ms":100}`)}, sumSquares),
		tasks.Func(tasks.Definition{Name: "slow-square", Version: "1", Description: "Squares n after ms milliseconds.",
			ExampleInput: []byte(`{"n":3,"ms":100}`)}, slowSquare),
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
		Usage: "taskworker with word-count, fan-out and sum-squares",
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
