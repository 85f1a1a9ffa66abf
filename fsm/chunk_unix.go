//go:build unix

package fsm

import (
	"fmt"
	"syscall"
)

// mapChunk maps size bytes of anonymous memory: outside the Go heap, resident only once written.
func mapChunk(size int) []byte {
	b, err := syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil { // out of address space or memory: as fatal as the heap running out
		panic(fmt.Sprintf("fsm: map %d bytes for frozen records: %v", size, err))
	}
	return b
}

func unmapChunk(b []byte) { _ = syscall.Munmap(b) }
