package lifecycle_test

import (
	"errors"
	"math"
	"testing"

	"github.com/esper-morph/esper/core/lifecycle"
)

func TestScheduleAlpha(t *testing.T) {
	cases := []struct {
		name     string
		s        lifecycle.Schedule
		t, tempo int64
		want     float64
	}{
		{"linear start", lifecycle.Linear, 0, 10, 0},
		{"linear before start", lifecycle.Linear, -3, 10, 0},
		{"linear quarter", lifecycle.Linear, 25, 100, 0.25},
		{"linear end", lifecycle.Linear, 10, 10, 1},
		{"linear past end", lifecycle.Linear, 11, 10, 1},
		{"cosine start", lifecycle.Cosine, 0, 10, 0},
		{"cosine half", lifecycle.Cosine, 5, 10, 0.5},
		{"cosine quarter", lifecycle.Cosine, 1, 4, (1 - math.Sqrt2/2) / 2},
		{"cosine end", lifecycle.Cosine, 10, 10, 1},
		{"zero tempo", lifecycle.Cosine, 0, 0, 1},
		{"negative tempo", lifecycle.Linear, 5, -1, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.s.Alpha(tc.t, tc.tempo)
			if math.Abs(got-tc.want) > 1e-15 {
				t.Fatalf("Alpha(%d, %d) = %.17g, want %.17g", tc.t, tc.tempo, got, tc.want)
			}
		})
	}
}

func TestScheduleMonotonicAndBounded(t *testing.T) {
	for _, s := range []lifecycle.Schedule{lifecycle.Linear, lifecycle.Cosine} {
		for _, tempo := range []int64{1, 2, 3, 7, 100, 1000} {
			prev := -1.0
			for step := int64(0); step <= tempo; step++ {
				a := s.Alpha(step, tempo)
				if a < prev || a < 0 || a > 1 {
					t.Fatalf("%v tempo %d: alpha(%d) = %v after %v", s, tempo, step, a, prev)
				}
				if a != s.Alpha(step, tempo) {
					t.Fatalf("%v not deterministic", s)
				}
				prev = a
			}
			if s.Alpha(0, tempo) != 0 || s.Alpha(tempo, tempo) != 1 {
				t.Fatalf("%v tempo %d: ends not exact", s, tempo)
			}
		}
	}
}

func TestParseSchedule(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want lifecycle.Schedule
		ok   bool
	}{
		{"linear", lifecycle.Linear, true},
		{"COSINE", lifecycle.Cosine, true},
		{"", 0, false},
		{"step", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := lifecycle.ParseSchedule(tc.in)
			if tc.ok != (err == nil) || (tc.ok && got != tc.want) {
				t.Fatalf("ParseSchedule(%q) = %v, %v", tc.in, got, err)
			}
			if !tc.ok && !errors.Is(err, lifecycle.ErrUnknownSchedule) {
				t.Fatalf("err = %v", err)
			}
			if tc.ok {
				b, err := got.MarshalText()
				if err != nil || string(b) != got.String() {
					t.Fatalf("MarshalText = %s, %v", b, err)
				}
			}
		})
	}
}
