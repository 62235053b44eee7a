package oona

import (
	"testing"
	"time"
)

// The writer sleeps while nothing waits: it wakes once WriteEvery after an
// event that no Flush wrote, and not at all for events a Flush wrote (each
// end of epoch flushes) nor while the bus is idle. With a clock it would
// wake about ten times in this test.
func TestRunLogWriterWakesOnlyForWhatWaits(t *testing.T) {
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
	// Bursts written by Flush, then an idle bus: no wake.
	for i := range 3 {
		publish(2 * i)
		publish(2*i + 1)
		if err := l.Flush(5 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * WriteEvery)
	if w := l.wakes.Load(); w != 0 {
		t.Fatalf("the writer woke %d times for events Flush had written", w)
	}
	// An event nobody flushes: the timer wakes the writer, which writes it.
	publish(6)
	deadline := time.Now().Add(50 * WriteEvery)
	for l.Stats().Lines != 7 {
		if time.Now().After(deadline) {
			t.Fatalf("written %d lines of 7 without Flush", l.Stats().Lines)
		}
		time.Sleep(WriteEvery / 10)
	}
	time.Sleep(5 * WriteEvery)
	if w := l.wakes.Load(); w != 1 {
		t.Fatalf("the writer woke %d times for one event, want 1", w)
	}
}
