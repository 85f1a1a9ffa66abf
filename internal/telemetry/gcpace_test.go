package telemetry

import (
	"testing"
	"time"
)

func TestGCPercentGivesABusySmallHeapAFixedHeadroom(t *testing.T) {
	for _, tt := range []struct {
		live, rate uint64
		want       int
	}{
		{8 << 20, 0, 100},                   // idle: the default, resident memory stays small
		{8 << 20, gcIdleAllocRate - 1, 100}, // still idle
		{8 << 20, 50 << 20, 400},            // busy, 8 MB live: 32 MB of headroom
		{2 << 20, 50 << 20, gcMaxPercent},   // a tiny heap is capped
		{64 << 20, 50 << 20, 100},           // larger than the headroom: the default
		{1 << 30, 50 << 20, 100},            // a million tasks: never less than the default
		{0, 50 << 20, 100},                  // nothing read yet
	} {
		if got := gcPercent(tt.live, tt.rate); got != tt.want {
			t.Errorf("gcPercent(live %d, rate %d) = %d, want %d", tt.live, tt.rate, got, tt.want)
		}
	}
}

// fakeRuntime is the runtime as GCPacer sees it: a clock, readings and the GOGC setting.
type fakeRuntime struct {
	now  time.Time
	r    paceReading
	sets []int
	held bool
}

func (f *fakeRuntime) pacer() *GCPacer {
	return &GCPacer{
		read: func() paceReading { return f.r },
		set:  func(p int) int { old := f.r.gogc; f.r.gogc = p; f.sets = append(f.sets, p); return old },
		now:  func() time.Time { return f.now },
		held: func() bool { return f.held },
	}
}

func (f *fakeRuntime) tick(alloc uint64) {
	f.now = f.now.Add(time.Second)
	f.r.allocs += alloc
}

func TestGCPacerFollowsTheLoadAndYieldsToARestore(t *testing.T) {
	f := &fakeRuntime{now: time.Unix(0, 0), r: paceReading{live: 8 << 20, gogc: 100}}
	p := f.pacer()
	p.Run() // the first reading: no rate yet
	if len(f.sets) != 0 {
		t.Fatalf("first run set %v", f.sets)
	}
	f.tick(100 << 20)
	p.Run()
	if f.r.gogc != 400 {
		t.Fatalf("busy with 8 MB live: GOGC %d, want 400", f.r.gogc)
	}
	// A restore holds the setting for its duration, however large the live heap grows.
	f.held = true
	f.r.live = 200 << 20
	f.tick(100 << 20)
	p.Run()
	if f.r.gogc != 400 {
		t.Fatalf("during a restore the pacer set GOGC %d", f.r.gogc)
	}
	// Then the pacer paces again.
	f.held = false
	f.tick(100 << 20)
	p.Run()
	if f.r.gogc != 100 {
		t.Fatalf("busy with 200 MB live: GOGC %d, want 100", f.r.gogc)
	}
	// Idle again: the default.
	f.r.live = 8 << 20
	f.tick(10 << 10)
	p.Run()
	if f.r.gogc != 100 {
		t.Fatalf("idle: GOGC %d, want 100", f.r.gogc)
	}
	if got := len(f.sets); got != 2 {
		t.Fatalf("set GOGC %d times (%v), want 2", got, f.sets)
	}
}

func TestGCPacerLeavesTheOperatorsGOGC(t *testing.T) {
	if p := NewGCPacer(func(k string) string {
		if k == "GOGC" {
			return "50"
		}
		return ""
	}, func() bool { return false }); p != nil {
		t.Fatal("a pacer was made although GOGC is set")
	}
	var p *GCPacer
	p.Run() // a nil pacer does nothing
}
