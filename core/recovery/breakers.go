package recovery

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
)

// State is a breaker's state.
type State int

const (
	// Closed: calls go through; failures are counted.
	Closed State = iota
	// HalfOpen: the cool-down has passed; a few probe calls go through, and
	// their outcome closes or reopens the breaker.
	HalfOpen
	// Open: calls are refused until the cool-down passes.
	Open
)

// String returns "closed", "half-open" or "open".
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case HalfOpen:
		return "half-open"
	case Open:
		return "open"
	}
	return "unknown"
}

// Config configures Breakers. The zero value is usable.
type Config struct {
	// Failures is the number of consecutive failures that opens a key's
	// breaker (default 5).
	Failures uint32
	// CoolDown is how long a breaker stays open before it lets probes
	// through (default 30 s).
	CoolDown time.Duration
	// Probes is the number of calls let through while half-open, and of
	// successes among them that close the breaker again (default 1).
	Probes uint32
	// Ignore reports errors that Do counts neither as success nor failure
	// (default: context.Canceled and context.DeadlineExceeded). It is called
	// without any lock held.
	Ignore func(error) bool
}

// Defaults of Config.
const (
	DefaultFailures = 5
	DefaultCoolDown = 30 * time.Second
)

func (c Config) withDefaults() (Config, error) {
	if c.CoolDown < 0 {
		return c, fmt.Errorf("%w: cool-down %v is negative", ErrConfig, c.CoolDown)
	}
	if c.Failures == 0 {
		c.Failures = DefaultFailures
	}
	if c.CoolDown == 0 {
		c.CoolDown = DefaultCoolDown
	}
	if c.Probes == 0 {
		c.Probes = 1
	}
	if c.Ignore == nil {
		c.Ignore = func(err error) bool {
			return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
		}
	}
	return c, nil
}

// breaker is the gobreaker instance behind one key. Outcomes are reported
// through the two-step API with one of these sentinel values, so gobreaker
// never calls code outside this package while it holds its lock.
type breaker = gobreaker.TwoStepCircuitBreaker[struct{}]

var (
	errFailed   = errors.New("failed")
	errExcluded = errors.New("excluded")
)

// keyState is one key's breaker and the last failure recorded for it.
type keyState struct {
	br *breaker
	// last is the most recent failure's error (nil when Record reported it
	// without one); guarded by Breakers.mu.
	last error
}

// Breakers is a set of circuit breakers keyed by string. A key has no
// breaker (and is Closed) until its first failure; Reset forgets it again.
type Breakers struct {
	cfg Config

	// mu guards m and the last field of its values.
	mu sync.Mutex
	m  map[string]*keyState
}

// NewBreakers returns an empty set configured by cfg.
func NewBreakers(cfg Config) (*Breakers, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Breakers{cfg: c, m: make(map[string]*keyState)}, nil
}

// get returns key's breaker, creating it when create is set (else nil).
func (b *Breakers) get(key string, create bool) *breaker {
	b.mu.Lock()
	defer b.mu.Unlock()
	ks := b.m[key]
	if ks == nil {
		if !create {
			return nil
		}
		failures := b.cfg.Failures
		ks = &keyState{br: gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
			Name:        key,
			MaxRequests: b.cfg.Probes,
			Timeout:     b.cfg.CoolDown,
			ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= failures },
			IsExcluded:  func(err error) bool { return err == errExcluded },
		})}
		b.m[key] = ks
	}
	return ks.br
}

// setLast records err as key's last failure.
func (b *Breakers) setLast(key string, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ks := b.m[key]; ks != nil {
		ks.last = err
	}
}

// LastError returns the last failure Do saw for key, or nil when there is
// none (the key never failed in Do, or was Reset).
func (b *Breakers) LastError(key string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ks := b.m[key]; ks != nil {
		return ks.last
	}
	return nil
}

func stateOf(br *breaker) State {
	if br == nil {
		return Closed
	}
	switch br.State() {
	case gobreaker.StateOpen:
		return Open
	case gobreaker.StateHalfOpen:
		return HalfOpen
	}
	return Closed
}

// Record reports one outcome for key and returns whether its breaker is
// open afterwards. Failures are counted while closed (Failures consecutive
// ones open it); while half-open, the outcome is a probe's (a failure
// reopens the breaker, Probes successes close it) unless Probes outcomes
// are already pending; while open, outcomes are ignored. A success on a key
// that never failed does nothing.
func (b *Breakers) Record(key string, failed bool) (open bool) {
	br := b.get(key, failed)
	if br == nil {
		return false
	}
	done, err := br.Allow()
	if err == nil {
		if failed {
			done(errFailed)
		} else {
			done(nil)
		}
	}
	return stateOf(br) == Open
}

// State returns key's state; a key that never failed is Closed.
func (b *Breakers) State(key string) State {
	return stateOf(b.get(key, false))
}

// Reset forgets key: it is Closed with no failures counted.
func (b *Breakers) Reset(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.m, key)
}

// Do calls fn unless key's breaker refuses, and records its outcome: a nil
// error is a success, an error Config.Ignore accepts is not counted, any
// other error (or a panic, which is re-raised) is a failure. A refused call
// returns an error wrapping ErrOpen naming the key, without calling fn.
func (b *Breakers) Do(key string, fn func() error) (err error) {
	br := b.get(key, false)
	if br == nil {
		// Never failed: no breaker to ask. Create one on the first failure.
		defer func() {
			if r := recover(); r != nil {
				b.Record(key, true)
				b.setLast(key, fmt.Errorf("panic: %v", r))
				panic(r)
			}
		}()
		err = fn()
		if err != nil && !b.cfg.Ignore(err) {
			b.Record(key, true)
			b.setLast(key, err)
		}
		return err
	}
	done, aerr := br.Allow()
	if aerr != nil {
		msg := fmt.Sprintf("%q is %v after %d consecutive failures (cool-down %v)", key, stateOf(br), b.cfg.Failures, b.cfg.CoolDown)
		if last := b.LastError(key); last != nil {
			msg += "; last failure: " + last.Error()
		}
		return fmt.Errorf("%w: %s", ErrOpen, msg)
	}
	defer func() {
		if r := recover(); r != nil {
			done(errFailed)
			b.setLast(key, fmt.Errorf("panic: %v", r))
			panic(r)
		}
	}()
	err = fn()
	switch {
	case err == nil:
		done(nil)
	case b.cfg.Ignore(err):
		done(errExcluded)
	default:
		done(errFailed)
		b.setLast(key, err)
	}
	return err
}

// Open returns the keys whose breakers are open now, sorted.
func (b *Breakers) Open() []string {
	b.mu.Lock()
	brs := make(map[string]*breaker, len(b.m))
	for k, ks := range b.m {
		brs[k] = ks.br
	}
	b.mu.Unlock()
	var keys []string
	for k, br := range brs {
		if stateOf(br) == Open {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// Len returns the number of keys with a breaker (keys that failed and were
// not Reset).
func (b *Breakers) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}
