package fsm

import (
	"cmp"
	"runtime"
	"slices"
	"sync"
	"unsafe"
)

// arena holds a store's frozen records outside the Go heap, in chunks of memory mapped from the
// operating system (chunk_unix.go). The collector lets the heap grow to twice what it holds
// live before it collects (GOGC 100), so a frozen record in the heap costs its size twice in
// resident memory; in the arena it costs its size once, rounded up to 16 bytes.
//
// A record's slot is reused once the record is deleted; never while something may still read it:
// readers take copies (thaw copies what it returns; an ID leaves the store as a copy), and a
// snapshot pins the arena from Snapshot to Release, so slots freed meanwhile wait in limbo until
// no snapshot can walk them. Records above maxArenaRecord (large inputs or results) stay in the
// heap. The chunks go back to the operating system when the arena is unreachable (a store
// replaced by a restore, once its last snapshot is released).
type arena struct {
	mu     sync.Mutex
	chunks *chunkSet
	tail   int // bytes used in the newest chunk
	free   [maxArenaRecord/arenaAlign + 1][]slotRef
	limbo  []slotRef
	pinned int // snapshots that may still read freed slots
}

const (
	arenaAlign     = 16
	maxArenaRecord = 2048
	chunkSize      = 4 << 20
)

// slotRef is a slot: its chunk, its offset in it, and its size class (size / arenaAlign).
type slotRef struct {
	chunk, off uint32
	class      uint16
}

// chunkSet is the arena's memory, apart from the arena so that a cleanup can unmap it once the
// arena is unreachable.
type chunkSet struct {
	list  [][]byte
	bases []chunkBase // sorted by address
}

type chunkBase struct {
	addr  uintptr
	chunk uint32
}

func newArena() *arena {
	a := &arena{chunks: &chunkSet{}}
	runtime.AddCleanup(a, func(cs *chunkSet) {
		for _, c := range cs.list {
			unmapChunk(c)
		}
	}, a.chunks)
	return a
}

// put stores b in the arena and returns it as a string of the arena's memory (b itself, copied
// into the heap, when it is too large or empty).
func (a *arena) put(b []byte) string {
	n := len(b)
	if n == 0 || n > maxArenaRecord {
		return string(b)
	}
	class := classOf(n)
	a.mu.Lock()
	defer a.mu.Unlock()
	var slot []byte
	if l := a.free[class]; len(l) > 0 {
		r := l[len(l)-1]
		a.free[class] = l[:len(l)-1]
		slot = a.chunks.list[r.chunk][r.off : int(r.off)+class*arenaAlign]
	} else {
		slot = a.bump(class * arenaAlign)
	}
	copy(slot, b)
	return unsafe.String(&slot[0], n)
}

// classOf is the size class of an n-byte record: its slot is class × arenaAlign bytes.
func classOf(n int) int { return (n + arenaAlign - 1) / arenaAlign }

// bump takes size fresh bytes from the newest chunk, or from a new one.
func (a *arena) bump(size int) []byte {
	cs := a.chunks
	if len(cs.list) == 0 || a.tail+size > chunkSize {
		c := mapChunk(chunkSize)
		idx := uint32(len(cs.list))
		cs.list = append(cs.list, c)
		base := chunkBase{uintptr(unsafe.Pointer(&c[0])), idx}
		i, _ := slices.BinarySearchFunc(cs.bases, base.addr, byAddr)
		cs.bases = slices.Insert(cs.bases, i, base)
		a.tail = 0
	}
	c := cs.list[len(cs.list)-1]
	slot := c[a.tail : a.tail+size : a.tail+size]
	a.tail += size
	return slot
}

func byAddr(b chunkBase, addr uintptr) int { return cmp.Compare(b.addr, addr) }

// locate finds the slot s (a string put returned) occupies; false for a string of the heap.
func (a *arena) locate(s string) (slotRef, bool) {
	if len(s) == 0 || len(s) > maxArenaRecord {
		return slotRef{}, false
	}
	p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
	bases := a.chunks.bases
	i, found := slices.BinarySearchFunc(bases, p, byAddr)
	if !found {
		i--
	}
	if i < 0 || p-bases[i].addr >= chunkSize {
		return slotRef{}, false
	}
	return slotRef{chunk: bases[i].chunk, off: uint32(p - bases[i].addr), class: uint16(classOf(len(s)))}, true
}

// release frees the slot of s (a string put returned, no longer referenced by the store): at
// once, or when the last pinning snapshot is released.
func (a *arena) release(s string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	r, ok := a.locate(s)
	if !ok {
		return
	}
	if a.pinned > 0 {
		a.limbo = append(a.limbo, r)
		return
	}
	a.free[r.class] = append(a.free[r.class], r)
}

// pin keeps every slot in use until the matching unpin: a snapshot walks records Apply may delete.
func (a *arena) pin() {
	a.mu.Lock()
	a.pinned++
	a.mu.Unlock()
}

func (a *arena) unpin() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pinned--; a.pinned > 0 {
		return
	}
	for _, r := range a.limbo {
		a.free[r.class] = append(a.free[r.class], r)
	}
	a.limbo = nil
}
