package nissa_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/nissa"
)

func fixedClock() time.Time { return time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC) }

func TestLoggerLines(t *testing.T) {
	var out bytes.Buffer
	l := nissa.NewLogger(&out, nissa.WithClock(fixedClock))
	nan := float32(math.NaN())
	if err := l.Signals(7, []float32{1.5, 0, 1, 2, 3, 4, 5, nan, 0.5, 9, 8, 7, 6, 5, float32(math.Inf(1)), 4}); err != nil {
		t.Fatal(err)
	}
	if err := l.Record("decision", 8, map[string]any{"op": "germinate", "reason": "plateau"}); err != nil {
		t.Fatal(err)
	}
	if err := l.Signals(9, nil); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		`{"time":"2025-01-02T03:04:05Z","kind":"signals","step":7,"data":{"train_loss_mean":1.5,"nonfinite_count":0,"layers":[[1,2,3,4,5,null,0.5],[9,8,7,6,5,null,4]]}}`,
		`{"time":"2025-01-02T03:04:05Z","kind":"decision","step":8,"data":{"op":"germinate","reason":"plateau"}}`,
		`{"time":"2025-01-02T03:04:05Z","kind":"signals","step":9,"data":{"train_loss_mean":null,"nonfinite_count":null,"layers":[]}}`,
	}, "\n") + "\n"
	if out.String() != want {
		t.Fatalf("log:\n%s\nwant:\n%s", out.String(), want)
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !json.Valid([]byte(line)) {
			t.Fatalf("invalid JSON line %s", line)
		}
	}
	if l.Lines() != 3 {
		t.Fatalf("Lines = %d", l.Lines())
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestLoggerErrors(t *testing.T) {
	l := nissa.NewLogger(failWriter{})
	err := l.Signals(1, []float32{1, 0})
	if !errors.Is(err, nissa.ErrLogWrite) || errcode.Of(err) != errcode.IO || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("err = %v", err)
	}
	var out bytes.Buffer
	l = nissa.NewLogger(&out)
	if err := l.Record("x", 1, math.NaN()); err == nil || out.Len() != 0 {
		t.Fatalf("unencodable payload: %v, wrote %q", err, out.String())
	}
}

// syncBuffer is a bytes.Buffer whose Write may be called concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func TestLoggerConcurrent(t *testing.T) {
	var out syncBuffer
	l := nissa.NewLogger(&out)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := l.Signals(int64(i), []float32{1, 0, 1, 2, 3, 4, 5, 6, 7}); err != nil {
					t.Error(err)
				}
				if err := l.Record("event", int64(i), map[string]int{"g": g}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSpace(out.b.String()), "\n")
	if len(lines) != 800 || l.Lines() != 800 {
		t.Fatalf("%d lines", len(lines))
	}
	for _, line := range lines {
		if !json.Valid([]byte(line)) {
			t.Fatalf("interleaved line %q", line)
		}
	}
}
