package oona

import (
	"testing"
	"time"
)

// The writer's clock stops when no event came for a tick: an idle bus does
// not wake the writer (a clock that ran always would wake it five times
// in each idle wait below), and an event that no Flush writes starts the
// clock again and is written.
func TestRunLogWriterSleepsWhileTheBusIsIdle(t *testing.T) {
	b, err := New(Config{Run: "wakes", Rank: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l, err := OpenRunLog(b, LogConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(5 * time.Second)
	publish := func(i int) {
		t.Helper()
		if _, err := b.Publish(Header{Kind: KindLifecycle, Actor: ActorSchedule, Step: int64(i)}, map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	// idleWakes waits until the clock has stopped, then returns the wakes
	// so far, checked unchanged over an idle wait.
	idleWakes := func() int64 {
		t.Helper()
		deadline := time.Now().Add(50 * WriteEvery)
		for l.armed.Load() {
			if time.Now().After(deadline) {
				t.Fatalf("the writer's clock still runs %v after the last event", 50*WriteEvery)
			}
			time.Sleep(WriteEvery / 10)
		}
		w := l.wakes.Load()
		time.Sleep(5 * WriteEvery)
		if got := l.wakes.Load(); got != w {
			t.Fatalf("the writer woke %d times on an idle bus", got-w)
		}
		return w
	}
	for i := range 3 { // bursts written by Flush, as at ends of epochs
		publish(2 * i)
		publish(2*i + 1)
		if err := l.Flush(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	before := idleWakes()
	// An event nobody flushes starts the clock again and is written.
	publish(6)
	deadline := time.Now().Add(50 * WriteEvery)
	for l.Stats().Lines != 7 {
		if time.Now().After(deadline) {
			t.Fatalf("written %d lines of 7 without Flush", l.Stats().Lines)
		}
		time.Sleep(WriteEvery / 10)
	}
	if after := idleWakes(); after == before {
		t.Fatal("the event was written without the writer waking")
	}
}
