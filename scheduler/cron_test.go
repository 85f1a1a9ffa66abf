package scheduler

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/taskworker/taskworker/fsm"
)

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func ptr(t time.Time) *time.Time { return &t }

func TestParseSpecAcceptsSecondsDescriptorsAndZones(t *testing.T) {
	tests := []struct {
		spec, tz string
		ok       bool
	}{
		{"@every 30s", "", true},
		{"*/5 * * * *", "", true},
		{"0 */5 * * * *", "", true},
		{"@hourly", "Europe/Paris", true},
		{"CRON_TZ=America/New_York 0 9 * * *", "", true},
		{"CRON_TZ=America/New_York 0 9 * * *", "UTC", false}, // zone given twice
		{"0 9 * * *", "Mars/Olympus", false},
		{"0 9 * * *", "Local", false},
		{"61 * * * *", "", false},
		{"", "", false},
		{"* * * * * * *", "", false},
	}
	for _, tt := range tests {
		_, err := ParseSpec(tt.spec, tt.tz)
		if (err == nil) != tt.ok || err != nil && !errors.Is(err, ErrBadSpec) {
			t.Errorf("ParseSpec(%q, %q) = %v, want ok %v", tt.spec, tt.tz, err, tt.ok)
		}
	}
}

func TestPlanTick(t *testing.T) {
	created := utc("2026-03-01T10:00:00.300Z")
	tests := []struct {
		name string
		s    fsm.Schedule
		now  time.Time
		want TickPlan
	}{
		{"@every: nothing due before the first tick",
			fsm.Schedule{Spec: "@every 10s", CreatedAt: created, CatchUp: 1},
			utc("2026-03-01T10:00:05Z"),
			TickPlan{Next: utc("2026-03-01T10:00:10Z")}},
		{"@every: the first tick is due",
			fsm.Schedule{Spec: "@every 10s", CreatedAt: created, CatchUp: 1},
			utc("2026-03-01T10:00:10Z"),
			TickPlan{Due: utc("2026-03-01T10:00:10Z"), Next: utc("2026-03-01T10:00:20Z")}},
		{"@every: ticks follow the last fired one",
			fsm.Schedule{Spec: "@every 10s", CreatedAt: created, LastFired: utc("2026-03-01T10:00:10Z"), CatchUp: 1},
			utc("2026-03-01T10:00:19.9Z"),
			TickPlan{Next: utc("2026-03-01T10:00:20Z")}},
		{"@every: after an outage only the newest missed tick fires (catch_up 1)",
			fsm.Schedule{Spec: "@every 10s", CreatedAt: created, LastFired: utc("2026-03-01T10:00:10Z"), CatchUp: 1},
			utc("2026-03-01T11:00:05Z"),
			TickPlan{Due: utc("2026-03-01T11:00:00Z"), Missed: 358, Next: utc("2026-03-01T11:00:10Z")}},
		{"@every: catch_up 3 fires the oldest of the newest 3 first",
			fsm.Schedule{Spec: "@every 10s", CreatedAt: created, LastFired: utc("2026-03-01T10:00:10Z"), CatchUp: 3},
			utc("2026-03-01T10:01:00Z"),
			TickPlan{Due: utc("2026-03-01T10:00:40Z"), Missed: 2, Next: utc("2026-03-01T10:01:10Z")}},
		{"@every: a fail-over shorter than catch_up misses nothing",
			fsm.Schedule{Spec: "@every 1s", CreatedAt: created, LastFired: utc("2026-03-01T10:00:10Z"), CatchUp: 5},
			utc("2026-03-01T10:00:12.5Z"),
			TickPlan{Due: utc("2026-03-01T10:00:11Z"), Next: utc("2026-03-01T10:00:13Z")}},
		{"cron: every 5 minutes, on the calendar",
			fsm.Schedule{Spec: "*/5 * * * *", CreatedAt: created, CatchUp: 1},
			utc("2026-03-01T10:04:00Z"),
			TickPlan{Next: utc("2026-03-01T10:05:00Z")}},
		{"cron with seconds",
			fsm.Schedule{Spec: "30 */5 * * * *", CreatedAt: created, CatchUp: 1},
			utc("2026-03-01T10:00:30Z"),
			TickPlan{Due: utc("2026-03-01T10:00:30Z"), Next: utc("2026-03-01T10:05:30Z")}},
		{"cron: a day's outage fires the newest 2 of 288 missed",
			fsm.Schedule{Spec: "*/5 * * * *", CreatedAt: created, LastFired: utc("2026-03-01T10:00:00Z"), CatchUp: 2},
			utc("2026-03-02T10:02:00Z"),
			TickPlan{Due: utc("2026-03-02T09:55:00Z"), Missed: 286, Next: utc("2026-03-02T10:05:00Z")}},
		{"time zone: 9:00 in New York is 14:00 UTC in winter",
			fsm.Schedule{Spec: "0 9 * * *", TimeZone: "America/New_York", CreatedAt: created, CatchUp: 1},
			utc("2026-03-01T12:00:00Z"),
			TickPlan{Next: utc("2026-03-01T14:00:00Z")}},
		{"time zone: and 13:00 UTC after the DST change",
			fsm.Schedule{Spec: "CRON_TZ=America/New_York 0 9 * * *", CreatedAt: utc("2026-03-09T00:00:00Z"), CatchUp: 1},
			utc("2026-03-09T12:00:00Z"),
			TickPlan{Next: utc("2026-03-09T13:00:00Z")}},
		{"start: no tick before it",
			fsm.Schedule{Spec: "@every 1m", CreatedAt: created, Start: ptr(utc("2026-03-01T12:00:00Z")), CatchUp: 1},
			utc("2026-03-01T11:00:00Z"),
			TickPlan{Next: utc("2026-03-01T12:00:00Z")}},
		{"start: the start itself is a tick",
			fsm.Schedule{Spec: "0 * * * *", CreatedAt: created, Start: ptr(utc("2026-03-01T12:00:00Z")), CatchUp: 1},
			utc("2026-03-01T12:00:00Z"),
			TickPlan{Due: utc("2026-03-01T12:00:00Z"), Next: utc("2026-03-01T13:00:00Z")}},
		{"end: a missed tick before the end still fires, none after",
			fsm.Schedule{Spec: "0 * * * *", CreatedAt: created, End: ptr(utc("2026-03-01T12:30:00Z")), CatchUp: 1},
			utc("2026-03-01T14:00:00Z"),
			TickPlan{Due: utc("2026-03-01T12:00:00Z"), Missed: 1}},
		{"end passed and fired: nothing left",
			fsm.Schedule{Spec: "0 * * * *", CreatedAt: created, LastFired: utc("2026-03-01T12:00:00Z"), End: ptr(utc("2026-03-01T12:30:00Z")), CatchUp: 1},
			utc("2026-03-01T14:00:00Z"),
			TickPlan{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PlanTick(&tt.s, tt.now)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Due.Equal(tt.want.Due) || !got.Next.Equal(tt.want.Next) || got.Missed != tt.want.Missed {
				t.Errorf("PlanTick = due %v missed %d next %v; want due %v missed %d next %v",
					got.Due, got.Missed, got.Next, tt.want.Due, tt.want.Missed, tt.want.Next)
			}
		})
	}
}

// Firing each planned tick and planning again walks the tick chain: no tick twice, none skipped
// within the catch-up bound, whatever moments the loop happens to wake at.
func TestPlanTickWalksTheChainOnce(t *testing.T) {
	for _, spec := range []string{"@every 7s", "*/10 * * * * *"} {
		s := fsm.Schedule{Spec: spec, CreatedAt: utc("2026-03-01T10:00:00.5Z"), CatchUp: 100}
		var fired []time.Time
		now := s.CreatedAt
		for _, step := range []time.Duration{3, 13, 1, 40, 2, 2, 90} {
			now = now.Add(step * time.Second)
			for {
				p, err := PlanTick(&s, now)
				if err != nil {
					t.Fatal(err)
				}
				if p.Due.IsZero() {
					break
				}
				fired = append(fired, p.Due)
				s.LastFired = p.Due
			}
		}
		want, _ := NextTicks(&fsm.Schedule{Spec: spec, CreatedAt: s.CreatedAt}, s.CreatedAt, len(fired))
		if !reflect.DeepEqual(fired, want) {
			t.Errorf("%s: fired %v\nwant %v", spec, fired, want)
		}
	}
}

func TestNextTicks(t *testing.T) {
	s := fsm.Schedule{Spec: "0 0 * * *", TimeZone: "Asia/Tokyo", CreatedAt: utc("2026-03-01T00:00:00Z"),
		End: ptr(utc("2026-03-03T00:00:00Z"))}
	got, err := NextTicks(&s, utc("2026-03-01T00:00:00Z"), 5)
	if err != nil {
		t.Fatal(err)
	}
	want := []time.Time{utc("2026-03-01T15:00:00Z"), utc("2026-03-02T15:00:00Z")} // midnight in Tokyo, until the end
	if !reflect.DeepEqual(got, want) {
		t.Errorf("NextTicks = %v, want %v", got, want)
	}
}

func TestMinIntervalIsTheShortestGap(t *testing.T) {
	from := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		spec string
		want time.Duration
	}{
		{"@every 1s", time.Second},
		{"@every 1h", time.Hour},
		{"*/5 * * * *", 5 * time.Minute},
		{"0,1 * * * *", time.Minute}, // 1 min, then 59: the busiest gap counts
		{"*/10 * * * * *", 10 * time.Second},
	} {
		got, err := MinInterval(tc.spec, "", from, 60)
		if err != nil || got != tc.want {
			t.Errorf("%s: %s, %v; want %s", tc.spec, got, err, tc.want)
		}
	}
}
