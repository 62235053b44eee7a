package session_test

import (
	"errors"
	"testing"

	"github.com/esper-morph/esper/core/session"
)

// TestAlphasAheadMatchesStepByStep: the table AlphasAhead gives equals the
// alphas Step writes when called once per step, through the end of a ramp
// (linear and cosine), with a seed that enters BLENDING inside the window
// keeping its current alpha in the table.
func TestAlphasAheadMatchesStepByStep(t *testing.T) {
	for _, schedule := range []string{"linear", "cosine"} {
		t.Run(schedule, func(t *testing.T) {
			cfg := baseConfig()
			cfg.TrainSteps, cfg.BlendSteps, cfg.Schedule = 2, 5, schedule
			cfg.Governor.MaxConcurrent = 4
			s := newSession(t, cfg)
			germinate(t, s, 0, 0, `{"template": "lowrank"}`)
			step(t, s, 3) // slot 0/0 BLENDING from step 3
			events(t, s)
			germinate(t, s, 1, 0, `{"template": "lowrank"}`) // TRAINING, blends inside the window
			width := s.Layers() * s.Slots()
			const n = 8
			table := make([]float32, n*width)
			if err := s.AlphasAhead(n, table); err != nil {
				t.Fatal(err)
			}
			seed1 := 1 * s.Slots()
			for k := range n {
				got := step(t, s, 1)
				for i := range width {
					if i == seed1 {
						if table[k*width+i] != 0 {
							t.Fatalf("step %d: a TRAINING seed keeps alpha 0 in the table, got %v", k+1, table[k*width+i])
						}
						continue
					}
					if table[k*width+i] != got[i] {
						t.Fatalf("step %d slot %d: table %v, Step %v", k+1, i, table[k*width+i], got[i])
					}
				}
			}
			if table[(n-1)*width] != 1 {
				t.Fatalf("the ramp ends at 1, got %v", table[(n-1)*width])
			}
		})
	}
}

func TestAlphasAheadRefusesBadArguments(t *testing.T) {
	s := newSession(t, baseConfig())
	width := s.Layers() * s.Slots()
	tests := []struct {
		name string
		n    int
		buf  int
		want error
	}{
		{"negative n", -1, 0, session.ErrArgument},
		{"n over MaxAhead", session.MaxAhead + 1, 0, session.ErrArgument},
		{"short buffer", 3, 3*width - 1, session.ErrAlphaBuffer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.AlphasAhead(tc.n, make([]float32, tc.buf)); !errors.Is(err, tc.want) {
				t.Fatalf("AlphasAhead(%d, %d floats) = %v, want %v", tc.n, tc.buf, err, tc.want)
			}
		})
	}
	if err := s.AlphasAhead(0, nil); err != nil {
		t.Fatalf("n 0: %v", err)
	}
}
