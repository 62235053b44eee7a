package session

import (
	"fmt"

	"github.com/esper-morph/esper/core/lifecycle"
)

// MaxAhead bounds the steps AlphasAhead looks ahead.
const MaxAhead = 1 << 16

// AlphasAhead writes to out the alpha every slot will have after each of
// the next n steps, were Step called once per step with nothing else in
// between: row k (0-based; slots layer-major) holds the alphas after k+1
// steps. A BLENDING seed follows its ramp (1 once the ramp ends, HOLDING's
// alpha, whether or not the session moves it on by itself); every other
// slot keeps the alpha it has now (a seed entering BLENDING in the window
// ramps from the Step after it). Nothing changes: a trainer takes the table
// once and calls Step for the steps in one batch later, instead of a call
// per step while a seed blends. n must be in [0, MaxAhead] (code INVALID);
// out must hold n x layers x slots floats (code BUFFER).
func (s *Session) AlphasAhead(n int, out []float32) error {
	if n < 0 || n > MaxAhead {
		return fmt.Errorf("session: alphas ahead: n %d must be in [0, %d]: %w", n, MaxAhead, ErrArgument)
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.unlock()
	width := len(s.seeds)
	if len(out) < n*width {
		return fmt.Errorf("session: alphas ahead: buffer holds %d floats, want %d (%d steps x %d layers x %d slots): %w",
			len(out), n*width, n, len(s.set.hosts), s.slots, ErrAlphaBuffer)
	}
	for i, sd := range s.seeds {
		for k := range n {
			a := sd.Alpha
			if sd.State == lifecycle.Blending {
				a = s.set.schedule.Alpha(sd.StepsInState+int64(k)+1, s.set.cfg.BlendSteps)
			}
			out[k*width+i] = float32(a)
		}
	}
	return nil
}
