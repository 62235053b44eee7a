package recovery_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/recovery"
)

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }

func TestClassify(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want recovery.Class
	}{
		{"nil", nil, recovery.None},
		{"plain", errors.New("boom"), recovery.Permanent},
		{"eintr", syscall.EINTR, recovery.Transient},
		{"eagain in PathError", &fs.PathError{Op: "read", Path: "/x", Err: syscall.EAGAIN}, recovery.Transient},
		{"ebusy wrapped", fmt.Errorf("urza: put: %w", &os.LinkError{Op: "rename", Err: syscall.EBUSY}), recovery.Transient},
		{"enoent", &fs.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, recovery.Permanent},
		{"enospc", syscall.ENOSPC, recovery.Permanent},
		{"timeout", fmt.Errorf("x: %w", timeoutErr{}), recovery.Transient},
		{"marked", recovery.MarkTransient(errors.New("flaky")), recovery.Transient},
		{"wrapped mark", fmt.Errorf("ctx: %w", recovery.MarkTransient(errors.New("flaky"))), recovery.Transient},
		{"corrupt", fmt.Errorf("urza: get: %w", errcode.ErrCorrupt), recovery.Corrupt},
		{"corrupt beats transient", recovery.MarkTransient(errcode.ErrCorrupt), recovery.Corrupt},
		{"canceled", context.Canceled, recovery.Permanent},
		{"canceled beats transient", recovery.MarkTransient(context.DeadlineExceeded), recovery.Permanent},
		{"cancelled code", errcode.ErrCancelled, recovery.Permanent},
		{"not found", errcode.ErrNotFound, recovery.Permanent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := recovery.Classify(tc.err); got != tc.want {
				t.Fatalf("Classify(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	if recovery.MarkTransient(nil) != nil {
		t.Fatal("MarkTransient(nil) != nil")
	}
}

func TestRetry(t *testing.T) {
	flaky := recovery.MarkTransient(errors.New("flaky"))
	perm := errcode.Errorf(errcode.IO, "disk on fire")
	fast := recovery.Policy{Attempts: 4, Base: time.Microsecond, Max: 10 * time.Microsecond}
	cases := []struct {
		name      string
		results   []error
		wantCalls int
		wantErr   error
		wantCode  errcode.Code
	}{
		{"first try", []error{nil}, 1, nil, errcode.OK},
		{"after transients", []error{flaky, flaky, nil}, 3, nil, errcode.OK},
		{"permanent stops", []error{flaky, perm, nil}, 2, perm, errcode.IO},
		{"corrupt stops", []error{errcode.ErrCorrupt}, 1, errcode.ErrCorrupt, errcode.Corrupt},
		{"gives up", []error{flaky, flaky, flaky, syscall.EAGAIN, nil}, 4, syscall.EAGAIN, errcode.Internal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := recovery.Retry(context.Background(), fast, func(context.Context) error {
				calls++
				return tc.results[calls-1]
			})
			if calls != tc.wantCalls {
				t.Fatalf("calls = %d, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if errcode.Of(err) != tc.wantCode {
				t.Fatalf("code = %v, want %v", errcode.Of(err), tc.wantCode)
			}
		})
	}
}

func TestRetryCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	p := recovery.Policy{Attempts: 10, Base: time.Hour, Max: time.Hour}
	go func() {
		time.Sleep(10 * time.Millisecond)
		cancel()
	}()
	err := recovery.Retry(ctx, p, func(context.Context) error {
		calls++
		return recovery.MarkTransient(errors.New("flaky"))
	})
	if calls != 1 || !errors.Is(err, recovery.ErrCancelled) || !errors.Is(err, context.Canceled) {
		t.Fatalf("calls %d, err %v", calls, err)
	}
	if errcode.Of(err) != errcode.Cancelled {
		t.Fatalf("code = %v", errcode.Of(err))
	}
	// Cancelled before the first call: fn never runs.
	err = recovery.Retry(ctx, p, func(context.Context) error { t.Fatal("called"); return nil })
	if errcode.Of(err) != errcode.Cancelled {
		t.Fatalf("err = %v", err)
	}
}

func TestPolicyDelay(t *testing.T) {
	p := recovery.Policy{Base: 10 * time.Millisecond, Max: 50 * time.Millisecond}
	want := []time.Duration{10, 20, 40, 50, 50}
	for i, w := range want {
		d, err := p.Delay(i + 1)
		if err != nil || d != w*time.Millisecond {
			t.Fatalf("Delay(%d) = %v, %v; want %v", i+1, d, err, w*time.Millisecond)
		}
	}
	// Jitter draws from the injected source: reproducible and bounded.
	jit := func(seed uint64) []time.Duration {
		q := recovery.Policy{Base: 100 * time.Millisecond, Max: time.Second, Jitter: 0.5, Rand: rand.New(rand.NewPCG(seed, 1))}
		var ds []time.Duration
		for i := 1; i <= 5; i++ {
			d, err := q.Delay(i)
			if err != nil {
				t.Fatal(err)
			}
			full, _ := recovery.Policy{Base: 100 * time.Millisecond, Max: time.Second}.Delay(i)
			if d > full || d < full/2 {
				t.Fatalf("jittered delay %v outside [%v, %v]", d, full/2, full)
			}
			ds = append(ds, d)
		}
		return ds
	}
	a, b := jit(3), jit(3)
	for i := range a {
		if a[i] != b[i] {
			t.Fatal("same seed, different jitter")
		}
	}
	for _, bad := range []recovery.Policy{{Attempts: -1}, {Jitter: 2, Rand: rand.New(rand.NewPCG(1, 1))}, {Jitter: 0.5}, {Max: -time.Second}} {
		if err := bad.Validate(); !errors.Is(err, recovery.ErrConfig) {
			t.Fatalf("Validate(%+v) = %v", bad, err)
		}
		if err := recovery.Retry(context.Background(), bad, func(context.Context) error { return nil }); !errors.Is(err, recovery.ErrConfig) {
			t.Fatalf("Retry with %+v = %v", bad, err)
		}
	}
}

func TestLockedRandConcurrent(t *testing.T) {
	r := recovery.NewLockedRand(42)
	p := recovery.Policy{Attempts: 3, Base: time.Microsecond, Jitter: 1, Rand: r}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				_ = recovery.Retry(context.Background(), p, func(context.Context) error { return recovery.MarkTransient(errors.New("x")) })
			}
		}()
	}
	wg.Wait()
	if f := r.Float64(); f < 0 || f >= 1 {
		t.Fatalf("Float64 = %v", f)
	}
}
