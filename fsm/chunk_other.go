//go:build !unix

package fsm

// mapChunk allocates a chunk in the Go heap where there is no mmap: frozen records then cost
// what they would as heap strings, and nothing else changes.
func mapChunk(size int) []byte { return make([]byte, size) }

func unmapChunk([]byte) {}
