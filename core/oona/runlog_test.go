package oona_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/oona"
)

// readLines returns the events of a JSON-lines file and the number of
// lines that do not decode.
func readLines(t testing.TB, path string) (evs []oona.Event, bad int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 8<<20)
	for sc.Scan() {
		var ev oona.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.ID == "" {
			bad++
			continue
		}
		evs = append(evs, ev)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return evs, bad
}

func openNode(t testing.TB, home string, lc oona.LogConfig) *oona.Node {
	t.Helper()
	n, err := oona.OpenNode(oona.NodeConfig{Run: "run-a", Home: home, Log: lc})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close(5 * time.Second) })
	return n
}

func TestRunLogWritesEveryEventInOrder(t *testing.T) {
	home := t.TempDir()
	n := openNode(t, home, oona.LogConfig{})
	for i := range 100 {
		if _, err := n.Bus.Publish(lifecycle(int64(i)), map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Log.Flush(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(home, "run-a", "events.jsonl")
	if n.Log.Path() != path {
		t.Fatalf("path %s, want %s", n.Log.Path(), path)
	}
	// Flushed: the lines are in the file before Close.
	evs, bad := readLines(t, path)
	if len(evs) != 100 || bad != 0 {
		t.Fatalf("%d events, %d bad lines after Flush, want 100, 0", len(evs), bad)
	}
	if _, err := n.Bus.Publish(oona.Header{Kind: oona.KindRun, Actor: oona.ActorSystem}, map[string]string{"phase": "end"}); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	evs, bad = readLines(t, path)
	if len(evs) != 101 || bad != 0 {
		t.Fatalf("%d events, %d bad lines after Close", len(evs), bad)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("line %d has seq %d", i, ev.Seq)
		}
	}
	st := n.Stats()
	if st.Log.Lines != 101 || st.Log.Dropped != 0 || st.Log.Lost != 0 || st.Log.Syncs < 1 || st.Published != 101 {
		t.Fatalf("stats %+v", st)
	}
	if err := n.Log.Flush(time.Second); !errors.Is(err, oona.ErrClosed) {
		t.Fatalf("flush after close: %v", err)
	}
}

func TestRunLogRotatesAtTheBound(t *testing.T) {
	cases := []struct {
		name  string
		keep  int
		files []string // as listed
		order []string // oldest first
	}{
		{"keep 2", 2, []string{"events.1.jsonl", "events.2.jsonl", "events.jsonl"},
			[]string{"events.2.jsonl", "events.1.jsonl", "events.jsonl"}},
		{"keep none", -1, []string{"events.jsonl"}, []string{"events.jsonl"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			home := t.TempDir()
			const max = 4096
			n := openNode(t, home, oona.LogConfig{MaxBytes: max, Keep: c.keep})
			pad := strings.Repeat("x", 200)
			for i := range 200 {
				if _, err := n.Bus.Publish(lifecycle(int64(i)), map[string]any{"i": i, "pad": pad}); err != nil {
					t.Fatal(err)
				}
			}
			if err := n.Close(5 * time.Second); err != nil {
				t.Fatal(err)
			}
			dir := filepath.Join(home, "run-a")
			entries, _ := os.ReadDir(dir)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if fmt.Sprint(names) != fmt.Sprint(c.files) {
				t.Fatalf("files %v, want %v", names, c.files)
			}
			// Oldest file first: the lines kept are the newest, contiguous, each file within the bound.
			var seqs []uint64
			for _, name := range c.order {
				path := filepath.Join(dir, name)
				st, _ := os.Stat(path)
				if st.Size() > max {
					t.Fatalf("%s is %d bytes, over the bound %d", name, st.Size(), max)
				}
				evs, bad := readLines(t, path)
				if bad != 0 {
					t.Fatalf("%s: %d bad lines", name, bad)
				}
				for _, ev := range evs {
					seqs = append(seqs, ev.Seq)
				}
			}
			if len(seqs) == 0 || seqs[len(seqs)-1] != 200 {
				t.Fatalf("the newest event is not last: %v", seqs)
			}
			for i := 1; i < len(seqs); i++ {
				if seqs[i] != seqs[i-1]+1 {
					t.Fatalf("gap in the kept lines at %d: %v", i, seqs)
				}
			}
			if st := n.Log.Stats(); st.Rotations == 0 || st.Lines != 200 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestRunLogRepairsACutLastLine(t *testing.T) {
	home := t.TempDir()
	dir := filepath.Join(home, "run-a")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "events.jsonl")
	// A complete line, then one cut by a crash mid-write.
	if err := os.WriteFile(path, []byte(`{"v":1,"id":"x-1","seq":1}`+"\n"+`{"v":1,"id":"x-2","se`), 0o644); err != nil {
		t.Fatal(err)
	}
	n := openNode(t, home, oona.LogConfig{})
	if _, err := n.Bus.Publish(lifecycle(7), nil); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	evs, bad := readLines(t, path)
	if len(evs) != 2 || bad != 1 || evs[1].Step != 7 {
		t.Fatalf("events %+v, bad %d: want the old line, the cut one alone on its line, the new one", evs, bad)
	}
}

func TestRunLogConfig(t *testing.T) {
	b := newBus(t, "r")
	cases := []struct {
		name string
		cfg  oona.LogConfig
	}{
		{"no dir", oona.LogConfig{}},
		{"tiny max", oona.LogConfig{Dir: t.TempDir(), MaxBytes: 100}},
		{"keep", oona.LogConfig{Dir: t.TempDir(), Keep: oona.MaxKeep + 1}},
		{"buffer", oona.LogConfig{Dir: t.TempDir(), Buffer: -1}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := oona.OpenRunLog(b, c.cfg); !errors.Is(err, oona.ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
		})
	}
	if _, err := oona.ParseNodeConfig([]byte(`{"run":"r","home":"/x","extra":1}`)); !errors.Is(err, oona.ErrConfig) {
		t.Fatalf("unknown field accepted: %v", err)
	}
	if _, err := oona.OpenNode(oona.NodeConfig{Run: "r"}); !errors.Is(err, oona.ErrConfig) {
		t.Fatalf("node without home: %v", err)
	}
}

func TestRunLogOtherRankHasItsOwnFile(t *testing.T) {
	home := t.TempDir()
	n, err := oona.OpenNode(oona.NodeConfig{Run: "run-a", Rank: 1, Home: home})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Bus.Publish(lifecycle(1), nil); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	evs, _ := readLines(t, filepath.Join(home, "run-a", "events.rank1.jsonl"))
	if len(evs) != 1 || evs[0].Rank != 1 {
		t.Fatalf("rank 1 log: %+v", evs)
	}
}

// fileLines counts the events in the run log's current file now.
func fileLines(t testing.TB, n *oona.Node) int {
	t.Helper()
	evs, bad := readLines(t, n.Log.Path())
	if bad != 0 {
		t.Fatalf("%d bad lines", bad)
	}
	return len(evs)
}

// Without Flush, the writer hands events to the OS within about
// WriteEvery; an fsync an event asks for (a run event) is done by the
// writer after a Flush wrote the line.
func TestRunLogWritesWithoutFlushAndSyncsAfterIt(t *testing.T) {
	n := openNode(t, t.TempDir(), oona.LogConfig{})
	if _, err := n.Bus.Publish(lifecycle(1), map[string]int{"i": 1}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * oona.WriteEvery)
	for fileLines(t, n) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("not written after %v without Flush", 20*oona.WriteEvery)
		}
		time.Sleep(oona.WriteEvery / 10)
	}
	syncs := n.Log.Stats().Syncs
	if _, err := n.Bus.Publish(oona.Header{Kind: oona.KindRun, Actor: oona.ActorSystem}, map[string]string{"phase": "start"}); err != nil {
		t.Fatal(err)
	}
	if err := n.Log.Flush(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := fileLines(t, n); got != 2 {
		t.Fatalf("%d lines after Flush, want 2", got)
	}
	for n.Log.Stats().Syncs == syncs {
		if time.Now().After(deadline) {
			t.Fatal("the run event's fsync was not done")
		}
		time.Sleep(time.Millisecond)
	}
}

// A burst that fills half the buffer wakes the writer before its timer:
// a buffer of 16 takes 200 events published over less than
// WriteEvery without dropping one.
func TestRunLogWritesWhenHalfFull(t *testing.T) {
	n := openNode(t, t.TempDir(), oona.LogConfig{Buffer: 16})
	const events = 200
	start := time.Now()
	for i := range events {
		if _, err := n.Bus.Publish(lifecycle(int64(i)), map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Microsecond)
	}
	if err := n.Log.Flush(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	st := n.Log.Stats()
	if st.Dropped != 0 || st.Lines != events || fileLines(t, n) != events {
		t.Fatalf("after %v: stats %+v, %d lines in the file", time.Since(start), st, fileLines(t, n))
	}
}
