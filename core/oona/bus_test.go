package oona_test

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/esper-morph/esper/core/oona"
)

func newBus(t testing.TB, run string) *oona.Bus {
	t.Helper()
	b, err := oona.New(oona.Config{Run: run, Rank: 0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func lifecycle(step int64) oona.Header {
	return oona.Header{Kind: oona.KindLifecycle, Actor: oona.ActorPolicy, Step: step, Epoch: 2}
}

func TestConfig(t *testing.T) {
	cases := []struct {
		name string
		cfg  oona.Config
		ok   bool
	}{
		{"plain", oona.Config{Run: "20261207-054100-3f9a2c1b"}, true},
		{"rank", oona.Config{Run: "r_1", Rank: 3}, true},
		{"empty run", oona.Config{}, false},
		{"dot", oona.Config{Run: "a.b"}, false},
		{"wildcard", oona.Config{Run: "a*"}, false},
		{"space", oona.Config{Run: "a b"}, false},
		{"slash", oona.Config{Run: "../x"}, false},
		{"negative rank", oona.Config{Run: "r", Rank: -1}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := oona.New(c.cfg)
			if c.ok != (err == nil) {
				t.Fatalf("New(%+v) err = %v, want ok=%v", c.cfg, err, c.ok)
			}
			if err != nil && !errors.Is(err, oona.ErrConfig) {
				t.Fatalf("err %v does not wrap ErrConfig", err)
			}
			if b != nil {
				b.Close()
			}
		})
	}
}

func TestPublishStampsAndEncodes(t *testing.T) {
	fixed := time.Date(2026, 12, 7, 8, 0, 0, 123, time.UTC)
	b, err := oona.New(oona.Config{Run: "run-1", Rank: 2}, oona.WithClock(func() time.Time { return fixed }))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := b.Subscribe("t", 16)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := range 5 {
		ev, err := b.Publish(lifecycle(int64(i)), map[string]any{"to": "TRAINING", "i": i})
		if err != nil {
			t.Fatal(err)
		}
		got := <-sub.C()
		if got != ev {
			t.Fatalf("subscriber got %p, publish returned %p", got, ev)
		}
		var back oona.Event
		if err := json.Unmarshal(ev.Line(), &back); err != nil {
			t.Fatalf("line %q: %v", ev.Line(), err)
		}
		if back.V != oona.SchemaVersion || back.Run != "run-1" || back.Rank != 2 || back.Seq != uint64(i+1) ||
			back.Step != int64(i) || back.Epoch != 2 || back.Kind != oona.KindLifecycle || back.Actor != oona.ActorPolicy ||
			!back.Time.Equal(fixed) || back.ID != ev.ID {
			t.Fatalf("decoded %+v from %s", back, ev.Line())
		}
		if ev.Line()[len(ev.Line())-1] != '\n' {
			t.Fatal("line does not end with a newline")
		}
		if seen[ev.ID] {
			t.Fatalf("id %s repeated", ev.ID)
		}
		seen[ev.ID] = true
		if ev.Subject() != "esper.v1.run-1.2.lifecycle" {
			t.Fatalf("subject %s", ev.Subject())
		}
	}
	// Two buses of one run (a resumed run) never share an id.
	b2, _ := oona.New(oona.Config{Run: "run-1", Rank: 2})
	defer b2.Close()
	ev, _ := b2.Publish(lifecycle(0), nil)
	if seen[ev.ID] {
		t.Fatalf("a second bus reused id %s", ev.ID)
	}
}

func TestPublishRefusesBadEvents(t *testing.T) {
	b := newBus(t, "r")
	cases := []struct {
		name string
		h    oona.Header
		data any
	}{
		{"kind", oona.Header{Kind: "gossip", Actor: oona.ActorPolicy}, nil},
		{"actor", oona.Header{Kind: oona.KindEpoch, Actor: "someone"}, nil},
		{"array", lifecycle(0), []int{1}},
		{"raw array", lifecycle(0), json.RawMessage(`[1]`)},
		{"raw invalid", lifecycle(0), []byte(`{"a":`)},
		{"unencodable", lifecycle(0), map[string]any{"f": func() {}}},
		{"appender array", lifecycle(0), appender(`[1]`)},
		{"appender empty", lifecycle(0), appender(``)},
		{"appender too large", lifecycle(0), appender(`{"a":"` + strings.Repeat("x", oona.MaxDataBytes) + `"}`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := b.Publish(c.h, c.data); !errors.Is(err, oona.ErrEvent) {
				t.Fatalf("err = %v, want ErrEvent", err)
			}
		})
	}
	if st := b.Stats(); st.Published != 0 {
		t.Fatalf("published %d after refusals", st.Published)
	}
	ev, err := b.Publish(lifecycle(0), json.RawMessage(" { \"a\" : 1 } "))
	if err != nil || string(ev.Data) != `{"a":1}` || ev.Seq != 1 {
		t.Fatalf("raw object: %v %s seq %d", err, ev.Data, ev.Seq)
	}
}

// appender is data that writes itself (oona.Appender).
type appender string

func (a appender) AppendJSON(b []byte) []byte { return append(b, a...) }

// An Appender's bytes are the event's data as they are (no second
// encoding), and its line is the same as for the same object given as
// JSON text.
func TestPublishTakesAnAppendersBytes(t *testing.T) {
	b := newBus(t, "r")
	s, _ := b.Subscribe("s", 4)
	doc := `{"b":[1,2.5,null],"a":"\u003cx\u003e"}`
	ev, err := b.Publish(lifecycle(3), appender(doc))
	if err != nil || string(ev.Data) != doc {
		t.Fatalf("appender: %v, data %s", err, ev.Data)
	}
	ev2, err := b.Publish(lifecycle(3), json.RawMessage(doc))
	if err != nil {
		t.Fatal(err)
	}
	strip := func(e *oona.Event) string { // the line less its id, seq and time
		var m map[string]json.RawMessage
		if err := json.Unmarshal(e.Line(), &m); err != nil {
			t.Fatal(err)
		}
		delete(m, "id")
		delete(m, "seq")
		delete(m, "time")
		out, _ := json.Marshal(m)
		return string(out)
	}
	if strip(ev) != strip(ev2) {
		t.Fatalf("lines differ:\n%s\n%s", ev.Line(), ev2.Line())
	}
	if got := <-s.C(); got != ev {
		t.Fatal("the subscriber did not get the event")
	}
}

// The widest event head (the longest run id, the largest rank, step and
// epoch) still makes one valid line around its data.
func TestPublishWidestHead(t *testing.T) {
	run := strings.Repeat("r", oona.MaxRunLen)
	b, err := oona.New(oona.Config{Run: run, Rank: oona.MaxRank})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, data := range []any{nil, appender(`{"a":1}`), map[string]int{"b": 2}, json.RawMessage(` {"c" : 3} `)} {
		ev, err := b.Publish(oona.Header{Kind: oona.KindPolicy, Actor: oona.ActorGovernor, Step: math.MaxInt64,
			Epoch: math.MaxInt}, data)
		if err != nil {
			t.Fatal(err)
		}
		var back oona.Event
		if err := json.Unmarshal(ev.Line(), &back); err != nil {
			t.Fatalf("%s: %v", ev.Line(), err)
		}
		if back.Run != run || back.Rank != oona.MaxRank || back.Step != math.MaxInt64 || back.Epoch != math.MaxInt ||
			string(back.Data) != string(ev.Data) || ev.Line()[len(ev.Line())-1] != '\n' {
			t.Fatalf("line %s decodes to %+v", ev.Line(), back)
		}
	}
}

func TestSlowSubscriberNeverBlocks(t *testing.T) {
	b := newBus(t, "r")
	slow, _ := b.Subscribe("slow", 2)
	fast, _ := b.Subscribe("fast", 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			if _, err := b.Publish(lifecycle(1), nil); err != nil {
				t.Error(err)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked on a subscriber nobody reads")
	}
	st := b.Stats()
	if st.Published != 50 || st.Delivered != 52 || st.Dropped != 48 {
		t.Fatalf("stats %+v, want published 50, delivered 2+50, dropped 48", st)
	}
	if s := slow.Stats(); s.Delivered != 2 || s.Dropped != 48 || s.Pending != 2 || s.Buffer != 2 {
		t.Fatalf("slow %+v", s)
	}
	if s := fast.Stats(); s.Delivered != 50 || s.Dropped != 0 {
		t.Fatalf("fast %+v", s)
	}
	// The slow subscriber still gets the first events, in order.
	if a, c := <-slow.C(), <-slow.C(); a.Seq != 1 || c.Seq != 2 {
		t.Fatalf("slow got seq %d, %d", a.Seq, c.Seq)
	}
}

func TestConcurrentPublishersKeepOrderPerSubscriber(t *testing.T) {
	b := newBus(t, "r")
	subs := make([]*oona.Subscription, 3)
	for i := range subs {
		subs[i], _ = b.Subscribe("s", 10000)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 500 {
				if _, err := b.Publish(lifecycle(1), nil); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	b.Close()
	for i, s := range subs {
		var last uint64
		n := 0
		for ev := range s.C() {
			if ev.Seq != last+1 {
				t.Fatalf("subscriber %d: seq %d after %d", i, ev.Seq, last)
			}
			last = ev.Seq
			n++
		}
		if n != 2000 {
			t.Fatalf("subscriber %d got %d events, want 2000", i, n)
		}
	}
}

func TestClose(t *testing.T) {
	b := newBus(t, "r")
	s, _ := b.Subscribe("s", 4)
	gone, _ := b.Subscribe("gone", 4)
	gone.Close()
	gone.Close()
	if _, err := b.Publish(lifecycle(0), nil); err != nil {
		t.Fatal(err)
	}
	if st := gone.Stats(); st.Delivered != 0 {
		t.Fatalf("an unsubscribed subscriber got %d events", st.Delivered)
	}
	b.Close()
	b.Close()
	if ev, ok := <-s.C(); !ok || ev.Seq != 1 {
		t.Fatal("the buffered event was lost at Close")
	}
	if _, ok := <-s.C(); ok {
		t.Fatal("channel still open after Close")
	}
	s.Close() // after the bus closed it: no double close
	if _, err := b.Publish(lifecycle(0), nil); !errors.Is(err, oona.ErrClosed) {
		t.Fatalf("publish after close: %v", err)
	}
	if _, err := b.Subscribe("late", 1); !errors.Is(err, oona.ErrClosed) {
		t.Fatalf("subscribe after close: %v", err)
	}
	if _, err := b.Subscribe("bad", -1); err == nil {
		t.Fatal("negative buffer accepted")
	}
}

// FuzzPublishData: whatever bytes a caller hands Publish as data (the C
// ABI passes them through), the bus either refuses them with ErrEvent or
// publishes a line that decodes back to an event holding a JSON object.
func FuzzPublishData(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, ` { "a" : [1, 2] } `, `[1]`, `"x"`, `{"a":`, `{"a":NaN}`, "{\"\\u0000\":1}", "{\"a\":\"\xff\"}"} {
		f.Add([]byte(s))
	}
	b, err := oona.New(oona.Config{Run: "fuzz"})
	if err != nil {
		f.Fatal(err)
	}
	defer b.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := b.Publish(lifecycle(1), data)
		if err != nil {
			if !errors.Is(err, oona.ErrEvent) {
				t.Fatalf("refused with %v, not ErrEvent", err)
			}
			return
		}
		var back struct {
			ID   string                     `json:"id"`
			Data map[string]json.RawMessage `json:"data"`
		}
		if !utf8.Valid(ev.Line()) {
			t.Fatalf("line %q is not UTF-8 (readers in other languages would refuse it)", ev.Line())
		}
		if err := json.Unmarshal(ev.Line(), &back); err != nil || back.ID != ev.ID || back.Data == nil {
			t.Fatalf("line %q does not decode: %v", ev.Line(), err)
		}
	})
}

// FuzzParseNodeConfig: a configuration document is decoded or refused with
// ErrConfig, never a panic.
func FuzzParseNodeConfig(f *testing.F) {
	for _, s := range []string{`{"run":"r","home":"/x"}`, `{"run":"r","log":{"max_bytes":4096},"nats":{"url":"nats://127.0.0.1:1"}}`,
		`{"run":1}`, `{} {}`, `{"extra":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := oona.ParseNodeConfig(data); err != nil && !errors.Is(err, oona.ErrConfig) {
			t.Fatalf("refused with %v, not ErrConfig", err)
		}
	})
}

// OnFirst's hook runs when an event lands in the subscription's empty
// buffer, not for the events that join it there; after the buffer is
// drained the next event calls it again.
func TestSubscriptionOnFirstCallsWhenTheBufferWasEmpty(t *testing.T) {
	b, err := oona.New(oona.Config{Run: "first", Rank: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := b.Subscribe("s", 8)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	sub.OnFirst(func() { calls++ })
	publish := func(n int) {
		for i := range n {
			if _, err := b.Publish(oona.Header{Kind: oona.KindLifecycle, Actor: oona.ActorSchedule, Step: int64(i)},
				map[string]int{"i": i}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, c := range []struct{ publish, drain, want int }{{3, 3, 1}, {1, 0, 2}, {2, 3, 2}, {1, 1, 3}} {
		publish(c.publish)
		if calls != c.want {
			t.Fatalf("%d calls after %+v, want %d", calls, c, c.want)
		}
		for range c.drain {
			<-sub.C()
		}
	}
	sub.OnFirst(nil)
	publish(1)
	if calls != 3 {
		t.Fatalf("%d calls after the hook was removed", calls)
	}
}

// PublishAll hands its events to each subscriber together: the OnFirst
// hook runs once, when all of them are in the buffer (one by one, Publish
// calls it with the first alone there: the control), in order and
// numbered in sequence; a refused record is left out with its error, and a
// closed bus publishes none.
func TestPublishAllHandsTheEventsOverTogether(t *testing.T) {
	b := newBus(t, "together")
	sub, err := b.Subscribe("s", 8)
	if err != nil {
		t.Fatal(err)
	}
	var seen []int // the buffer's length at each call of the hook
	sub.OnFirst(func() { seen = append(seen, len(sub.C())) })
	recs := []oona.Record{{Header: lifecycle(1), Data: map[string]int{"i": 1}},
		{Header: oona.Header{Kind: oona.KindHealth, Actor: oona.ActorTrainer}, Data: json.RawMessage(`{"h":2}`)},
		{Header: lifecycle(3), Data: nil}}
	if err := b.PublishAll(recs); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0] != 3 {
		t.Fatalf("the hook saw buffers of %v, want [3] (once, all events in)", seen)
	}
	for i, want := range []string{`{"i":1}`, `{"h":2}`, `{}`} {
		ev := <-sub.C()
		if ev.Seq != uint64(i+1) || string(ev.Data) != want || ev.Run != "together" || ev.ID == "" {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
	// The control: one Publish at a time calls the hook with one event in.
	seen = nil
	for _, r := range recs {
		if _, err := b.Publish(r.Header, r.Data); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != 1 || seen[0] != 1 {
		t.Fatalf("Publish: the hook saw buffers of %v, want [1]", seen)
	}
	for range recs {
		<-sub.C()
	}
	bad := []oona.Record{{Header: lifecycle(7)}, {Header: oona.Header{Kind: "nope", Actor: oona.ActorTrainer}},
		{Header: lifecycle(8), Data: "not an object"}, {Header: lifecycle(9)}}
	err = b.PublishAll(bad)
	if !errors.Is(err, oona.ErrEvent) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("PublishAll with two bad records: %v", err)
	}
	for i, step := range []int64{7, 9} {
		if ev := <-sub.C(); ev.Step != step || ev.Seq != uint64(7+i) {
			t.Fatalf("got step %d seq %d, want step %d seq %d", ev.Step, ev.Seq, step, 7+i)
		}
	}
	if st := b.Stats(); st.Published != 8 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
	b.Close()
	if err := b.PublishAll(recs); !errors.Is(err, oona.ErrClosed) {
		t.Fatalf("PublishAll on a closed bus: %v", err)
	}
}

// PublishAll signals HalfFull once, after the batch, when it took the
// buffer past half full; events beyond the buffer are dropped and counted.
func TestPublishAllHalfFullAndDrops(t *testing.T) {
	b := newBus(t, "half")
	sub, err := b.Subscribe("s", 4)
	if err != nil {
		t.Fatal(err)
	}
	recs := make([]oona.Record, 6)
	for i := range recs {
		recs[i] = oona.Record{Header: lifecycle(int64(i))}
	}
	if err := b.PublishAll(recs); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.HalfFull():
	default:
		t.Fatal("no half-full signal")
	}
	if st := sub.Stats(); st.Delivered != 4 || st.Dropped != 2 || st.Pending != 4 {
		t.Fatalf("stats %+v", st)
	}
}
