package recovery

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// Policy says how Retry retries. The zero value is usable: 3 attempts,
// 10 ms base delay, 1 s cap, no jitter.
type Policy struct {
	// Attempts is the total number of calls, first included (default 3;
	// 1 means no retry).
	Attempts int
	// Base is the delay before the second call; it doubles for each further
	// call (default 10 ms).
	Base time.Duration
	// Max caps the delay between calls (default 1 s).
	Max time.Duration
	// Jitter is the fraction of each delay that is randomised, in [0, 1]:
	// the delay d becomes d * (1 - Jitter*u) with u uniform in [0, 1)
	// drawn from Rand (default 0: no jitter).
	Jitter float64
	// Rand supplies u; it must be set when Jitter > 0. It is called from the
	// retrying goroutine: share a Policy between goroutines only with a Rand
	// that is safe for that, such as a *LockedRand.
	Rand interface{ Float64() float64 }
	// Classify decides which errors are retried: only those it calls
	// Transient (default: the package's Classify).
	Classify func(error) Class
}

// Defaults of Policy.
const (
	DefaultAttempts = 3
	DefaultBase     = 10 * time.Millisecond
	DefaultMax      = time.Second
)

// withDefaults returns p with zero fields set to their defaults, or an
// error for invalid values.
func (p Policy) withDefaults() (Policy, error) {
	if p.Attempts < 0 || p.Base < 0 || p.Max < 0 {
		return p, fmt.Errorf("%w: attempts, base and max must be >= 0 (got %d, %v, %v)", ErrConfig, p.Attempts, p.Base, p.Max)
	}
	if p.Jitter < 0 || p.Jitter > 1 || p.Jitter != p.Jitter {
		return p, fmt.Errorf("%w: jitter %v is not in [0, 1]", ErrConfig, p.Jitter)
	}
	if p.Jitter > 0 && p.Rand == nil {
		return p, fmt.Errorf("%w: jitter %v needs a Rand", ErrConfig, p.Jitter)
	}
	if p.Attempts == 0 {
		p.Attempts = DefaultAttempts
	}
	if p.Base == 0 {
		p.Base = DefaultBase
	}
	if p.Max == 0 {
		p.Max = DefaultMax
	}
	if p.Classify == nil {
		p.Classify = Classify
	}
	return p, nil
}

// Validate reports whether p is usable.
func (p Policy) Validate() error {
	_, err := p.withDefaults()
	return err
}

// Delay returns the wait after failed call number attempt (1 for the first
// call): min(Max, Base * 2^(attempt-1)), less its jitter.
func (p Policy) Delay(attempt int) (time.Duration, error) {
	p, err := p.withDefaults()
	if err != nil {
		return 0, err
	}
	return p.delay(attempt), nil
}

func (p Policy) delay(attempt int) time.Duration {
	d := p.Base
	for i := 1; i < attempt && d < p.Max; i++ {
		d *= 2
	}
	d = min(d, p.Max)
	if p.Jitter > 0 {
		d = time.Duration(float64(d) * (1 - p.Jitter*p.Rand.Float64()))
	}
	return d
}

// Retry calls fn until it succeeds, fails with an error p.Classify does not
// call Transient, or p.Attempts calls were made, sleeping p.Delay between
// calls. It returns nil on success, a non-transient error as fn returned it,
// and after the last attempt the last error wrapped with the count (its code
// is kept). When ctx ends first it returns an error wrapping ErrCancelled,
// ctx.Err() and, in its text, the last failure.
func Retry(ctx context.Context, p Policy, fn func(context.Context) error) error {
	p, err := p.withDefaults()
	if err != nil {
		return err
	}
	var last error
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return cancelled(ctx, attempt-1, last)
		}
		last = fn(ctx)
		if last == nil {
			return nil
		}
		if p.Classify(last) != Transient {
			return last
		}
		if attempt >= p.Attempts {
			return fmt.Errorf("recovery: %d attempts failed: %w", attempt, last)
		}
		t := time.NewTimer(p.delay(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return cancelled(ctx, attempt, last)
		case <-t.C:
		}
	}
}

func cancelled(ctx context.Context, attempts int, last error) error {
	if last == nil {
		return fmt.Errorf("%w before the first attempt: %w", ErrCancelled, context.Cause(ctx))
	}
	return fmt.Errorf("%w after %d attempt(s): %w (last error: %v)", ErrCancelled, attempts, context.Cause(ctx), last)
}

// LockedRand is a seeded random source safe for concurrent use, for a
// Policy shared between goroutines.
type LockedRand struct {
	// mu guards r.
	mu sync.Mutex
	r  *rand.Rand
}

// NewLockedRand returns a LockedRand seeded with seed.
func NewLockedRand(seed uint64) *LockedRand {
	return &LockedRand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// Float64 returns a uniform number in [0, 1).
func (l *LockedRand) Float64() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Float64()
}
