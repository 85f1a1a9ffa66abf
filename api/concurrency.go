package api

import "fmt"

// Concurrency keys: at most concurrency_limit tasks with one concurrency_key are assigned or
// running at once, cluster-wide. A submit names both, or its queue makes the key from the task's
// input by a template (QueueUpdate.ConcurrencyKey). Within a priority of a queue, pending tasks of
// different keys take turns.

// Bounds of concurrency keys.
const (
	// MaxConcurrencyLimit bounds concurrency_limit: 1..MaxConcurrencyLimit.
	MaxConcurrencyLimit = 100_000
	// MaxConcurrencyKey is the longest concurrency_key a submit may name, in bytes; a key a
	// template makes is cut at this length.
	MaxConcurrencyKey = 128
	// MaxKeyTemplate is the longest key template a queue may have, in bytes.
	MaxKeyTemplate = 256
)

// CodeInvalidConcurrency: a concurrency_key without a concurrency_limit or the other way round, a
// limit outside 1..MaxConcurrencyLimit, a key longer than MaxConcurrencyKey, or a queue's key
// template that does not parse.
const CodeInvalidConcurrency Code = "invalid_concurrency"

func init() { statusOf[CodeInvalidConcurrency] = 400 }

// CheckConcurrency validates a submit's concurrency key and limit: both or neither.
func CheckConcurrency(key string, limit int) error {
	switch {
	case key == "" && limit == 0:
		return nil
	case key == "" || limit == 0:
		return Errorf(CodeInvalidConcurrency, "concurrency_key and concurrency_limit come together")
	case len(key) > MaxConcurrencyKey:
		return Errorf(CodeInvalidConcurrency, "concurrency_key is longer than %d bytes", MaxConcurrencyKey)
	case limit < 1 || limit > MaxConcurrencyLimit:
		return Errorf(CodeInvalidConcurrency, "%s", fmt.Sprintf("concurrency_limit must be between 1 and %d, got %d", MaxConcurrencyLimit, limit))
	}
	return nil
}
