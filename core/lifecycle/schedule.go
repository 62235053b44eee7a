package lifecycle

import (
	"fmt"
	"math"
	"strings"
)

// Schedule is an alpha schedule: how a blending seed's weight rises from 0
// to 1 over its tempo (a number of optimizer steps).
type Schedule uint8

// The schedules.
const (
	// Linear: alpha(t) = t / tempo.
	Linear Schedule = iota
	// Cosine: alpha(t) = (1 - cos(pi * t / tempo)) / 2, slow at both ends.
	Cosine

	numSchedules
)

var scheduleNames = [numSchedules]string{"linear", "cosine"}

// String returns "linear" or "cosine".
func (s Schedule) String() string {
	if s < numSchedules {
		return scheduleNames[s]
	}
	return fmt.Sprintf("Schedule(%d)", uint8(s))
}

// ParseSchedule returns the schedule with the given name (case-insensitive).
func ParseSchedule(name string) (Schedule, error) {
	for i, n := range scheduleNames {
		if strings.EqualFold(n, name) {
			return Schedule(i), nil
		}
	}
	return 0, fmt.Errorf("lifecycle: schedule %q is not one of linear, cosine: %w", name, ErrUnknownSchedule)
}

// MarshalText encodes the schedule's name.
func (s Schedule) MarshalText() ([]byte, error) {
	if s >= numSchedules {
		return nil, fmt.Errorf("lifecycle: marshal schedule %d: %w", uint8(s), ErrUnknownSchedule)
	}
	return []byte(scheduleNames[s]), nil
}

// UnmarshalText decodes a schedule name.
func (s *Schedule) UnmarshalText(b []byte) error {
	v, err := ParseSchedule(string(b))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// Alpha returns the blend weight after t of tempo steps. It is exact at the
// ends (0 for t <= 0, 1 for t >= tempo), monotonic in t, deterministic, and
// 1 for any t when tempo <= 0 (no ramp).
func (s Schedule) Alpha(t, tempo int64) float64 {
	if tempo <= 0 || t >= tempo {
		return 1
	}
	if t <= 0 {
		return 0
	}
	x := float64(t) / float64(tempo)
	if s == Cosine {
		return (1 - math.Cos(math.Pi*x)) / 2
	}
	return x
}
