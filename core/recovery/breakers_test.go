package recovery_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/recovery"
)

func newBreakers(t testing.TB, cfg recovery.Config) *recovery.Breakers {
	t.Helper()
	b, err := recovery.NewBreakers(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRecordOpensAfterN(t *testing.T) {
	b := newBreakers(t, recovery.Config{Failures: 3, CoolDown: time.Hour})
	if b.Record("seed/0", false) || b.Len() != 0 {
		t.Fatal("a success created a breaker")
	}
	steps := []struct {
		failed bool
		open   bool
	}{{true, false}, {true, false}, {false, false}, {true, false}, {true, false}, {true, true}, {false, true}}
	for i, s := range steps {
		if got := b.Record("seed/0", s.failed); got != s.open {
			t.Fatalf("step %d: Record(%v) = %v, want %v", i, s.failed, got, s.open)
		}
	}
	if b.State("seed/0") != recovery.Open || b.State("seed/1") != recovery.Closed {
		t.Fatal("states wrong")
	}
	if got := b.Open(); len(got) != 1 || got[0] != "seed/0" {
		t.Fatalf("Open() = %v", got)
	}
	b.Reset("seed/0")
	if b.State("seed/0") != recovery.Closed || b.Len() != 0 {
		t.Fatal("Reset did not close")
	}
}

func TestHalfOpenAfterCoolDown(t *testing.T) {
	b := newBreakers(t, recovery.Config{Failures: 1, CoolDown: 20 * time.Millisecond})
	if !b.Record("k", true) {
		t.Fatal("did not open")
	}
	time.Sleep(30 * time.Millisecond)
	if s := b.State("k"); s != recovery.HalfOpen {
		t.Fatalf("state after cool-down = %v", s)
	}
	// A failing probe reopens it.
	if !b.Record("k", true) {
		t.Fatal("failed probe did not reopen")
	}
	time.Sleep(30 * time.Millisecond)
	// A successful probe closes it.
	if err := b.Do("k", func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if s := b.State("k"); s != recovery.Closed {
		t.Fatalf("state after good probe = %v", s)
	}
}

func TestDo(t *testing.T) {
	b := newBreakers(t, recovery.Config{Failures: 2, CoolDown: time.Hour})
	boom := errors.New("boom")
	calls := 0
	fn := func() error { calls++; return boom }
	for i := 0; i < 2; i++ {
		if err := b.Do("kernel", fn); !errors.Is(err, boom) {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	err := b.Do("kernel", fn)
	if !errors.Is(err, recovery.ErrOpen) || errcode.Of(err) != errcode.Unavailable {
		t.Fatalf("open breaker returned %v", err)
	}
	if !strings.Contains(err.Error(), "last failure: boom") || !errors.Is(b.LastError("kernel"), boom) {
		t.Fatalf("open breaker does not say why: %v", err)
	}
	if calls != 2 {
		t.Fatalf("fn called %d times, want 2", calls)
	}
	// Ignored errors are not failures.
	b2 := newBreakers(t, recovery.Config{Failures: 1, CoolDown: time.Hour})
	if err := b2.Do("k", func() error { return fmt.Errorf("stop: %w", context.Canceled) }); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if b2.State("k") != recovery.Closed {
		t.Fatal("cancellation counted as failure")
	}
	// A custom Ignore.
	b3 := newBreakers(t, recovery.Config{Failures: 1, CoolDown: time.Hour, Ignore: func(err error) bool { return errcode.Of(err) == errcode.NotFound }})
	_ = b3.Do("k", func() error { return errcode.ErrNotFound })
	_ = b3.Do("k", func() error { return errcode.ErrNotFound })
	if b3.State("k") != recovery.Closed {
		t.Fatal("ignored error counted")
	}
}

func TestDoPanicCountsAndPropagates(t *testing.T) {
	b := newBreakers(t, recovery.Config{Failures: 2, CoolDown: time.Hour})
	for i := 0; i < 2; i++ {
		func() {
			defer func() {
				if r := recover(); r != "kaboom" {
					t.Fatalf("recovered %v", r)
				}
			}()
			_ = b.Do("k", func() error { panic("kaboom") })
		}()
	}
	if b.State("k") != recovery.Open {
		t.Fatalf("state = %v after two panics", b.State("k"))
	}
}

func TestBreakersConcurrent(t *testing.T) {
	b := newBreakers(t, recovery.Config{Failures: 50, CoolDown: time.Hour})
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				key := fmt.Sprintf("k%d", i%10)
				b.Record(key, i%3 == 0)
				_ = b.Do(key, func() error { return nil })
				_ = b.State(key)
				if i%97 == 0 {
					b.Reset(key)
				}
			}
		}()
	}
	wg.Wait()
	if b.Len() > 10 {
		t.Fatalf("Len = %d", b.Len())
	}
}

func TestConfigErrors(t *testing.T) {
	if _, err := recovery.NewBreakers(recovery.Config{CoolDown: -time.Second}); !errors.Is(err, recovery.ErrConfig) {
		t.Fatalf("err = %v", err)
	}
	for s, want := range map[recovery.State]string{recovery.Closed: "closed", recovery.HalfOpen: "half-open", recovery.Open: "open"} {
		if s.String() != want {
			t.Fatalf("%d.String() = %s", s, s.String())
		}
	}
}
