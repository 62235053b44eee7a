package natsink_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/core/oona/natsink"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// follow starts a follower of cfg and closes it at the end of the test.
func follow(t testing.TB, cfg natsink.FollowConfig) *natsink.Follower {
	t.Helper()
	f, err := natsink.Follow(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// collect polls f until it holds n events (or 15 s pass) and returns their
// seq fields, with the last batch's state.
func collect(t testing.TB, f *natsink.Follower, n int) ([]int64, natsink.FollowStats) {
	t.Helper()
	var seqs []int64
	var st natsink.FollowStats
	deadline := time.Now().Add(15 * time.Second)
	for len(seqs) < n && time.Now().Before(deadline) {
		b := f.Poll(context.Background(), 200*time.Millisecond, 1000)
		st = b.FollowStats
		for _, raw := range b.Events {
			var ev struct {
				Seq int64  `json:"seq"`
				Run string `json:"run"`
			}
			if err := json.Unmarshal(raw, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Run != "nats-run" {
				t.Fatalf("followed an event of run %q: %s", ev.Run, raw)
			}
			seqs = append(seqs, ev.Seq)
		}
	}
	return seqs, st
}

func wantSeqs(t testing.TB, got []int64, from, n int) {
	t.Helper()
	want := make([]int64, n)
	for i := range want {
		want[i] = int64(from + i)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("followed seqs %v, want %v", got, want)
	}
}

func TestFollowerReadsTheRunFromTheStreamsStartThenLive(t *testing.T) {
	port := freePort(t)
	startServer(t, port, t.TempDir())
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	b := newBus(t)
	s, err := natsink.Open(b, natsink.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	// Another run on the same server: its events are not followed.
	other, err := oona.New(oona.Config{Run: "other-run"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	so, err := natsink.Open(other, natsink.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer so.Close(time.Second)
	publishN(t, b, 0, 20)
	publishN(t, other, 0, 5)
	waitSent(t, s, 20)
	waitSent(t, so, 5)

	f := follow(t, natsink.FollowConfig{Config: natsink.Config{URL: url}, Run: "nats-run"})
	deadline := time.Now().Add(10 * time.Second)
	for f.Stats().Mode == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := f.Stats(); st.Mode != natsink.ModeJetStream || st.Pending != 20 {
		t.Fatalf("before the first poll, the stream's 20 events are pending: %+v", st)
	}
	seqs, st := collect(t, f, 20)
	wantSeqs(t, seqs, 1, 20) // from the run's first event
	if st.Mode != natsink.ModeJetStream || st.Pending != 0 || st.Subject != "esper.v1.nats-run.0.>" {
		t.Fatalf("after the history: %+v", st)
	}
	publishN(t, b, 20, 10) // then live
	seqs, st = collect(t, f, 10)
	wantSeqs(t, seqs, 21, 10)
	if st.Received != 30 || st.Pending != 0 || st.Dropped != 0 {
		t.Fatalf("after the live events: %+v", st)
	}
	if b := f.Poll(context.Background(), 300*time.Millisecond, 10); len(b.Events) != 0 {
		t.Fatalf("nothing more was published, got %d events", len(b.Events))
	}
}

func TestFollowerSubscribesToTheSubjectWithoutAStream(t *testing.T) {
	port := freePort(t)
	// A server without JetStream: the follower falls back to the core
	// subject; a plain publisher sends to it.
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	defer srv.Shutdown()
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	f := follow(t, natsink.FollowConfig{Config: natsink.Config{URL: url}, Subject: "esper.v1.nats-run.*.>"})
	deadline := time.Now().Add(10 * time.Second)
	for f.Stats().Mode == "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if st := f.Stats(); st.Mode != natsink.ModeCore {
		t.Fatalf("no stream: %+v", st)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := 1; i <= 5; i++ {
		if err := nc.Publish("esper.v1.nats-run.0.lifecycle", []byte(fmt.Sprintf(`{"seq":%d,"run":"nats-run"}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Publish("esper.v1.nats-run.0.lifecycle", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("esper.v1.other-run.0.lifecycle", []byte(`{"seq":99,"run":"other-run"}`)); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	seqs, _ := collect(t, f, 5)
	wantSeqs(t, seqs, 1, 5)
	time.Sleep(100 * time.Millisecond)
	if st := f.Stats(); st.Skipped != 1 || st.Pending != -1 {
		t.Fatalf("core mode: %+v", st)
	}
}

func TestFollowerWaitsForAnAbsentServer(t *testing.T) {
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	f := follow(t, natsink.FollowConfig{Config: natsink.Config{URL: url}, Run: "nats-run"})
	start := time.Now()
	if b := f.Poll(context.Background(), 200*time.Millisecond, 10); len(b.Events) != 0 || b.Connected || b.Mode != "" {
		t.Fatalf("no server: %+v", b)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("poll without a server took %v", d)
	}
	startServer(t, port, t.TempDir())
	b := newBus(t)
	s, err := natsink.Open(b, natsink.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	publishN(t, b, 0, 3)
	seqs, st := collect(t, f, 3)
	wantSeqs(t, seqs, 1, 3)
	if !st.Connected {
		t.Fatalf("%+v", st)
	}
}

func TestFollowConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
	}{
		{"no run or subject", `{"url":"nats://127.0.0.1:4222"}`},
		{"both", `{"url":"nats://127.0.0.1:4222","run":"r","subject":"esper.v1.r.>"}`},
		{"bad subject", `{"url":"nats://127.0.0.1:4222","subject":"esper..v1"}`},
		{"> not last", `{"url":"nats://127.0.0.1:4222","subject":"esper.>.v1"}`},
		{"bad run", `{"url":"nats://127.0.0.1:4222","run":"a b"}`},
		{"negative rank", `{"url":"nats://127.0.0.1:4222","run":"r","rank":-1}`},
		{"plaintext off loopback", `{"url":"nats://10.1.2.3:4222","run":"r"}`},
		{"unknown field", `{"url":"nats://127.0.0.1:4222","run":"r","nope":1}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := natsink.ParseFollow([]byte(tc.doc))
			if err == nil {
				var f *natsink.Follower
				f, err = natsink.Follow(cfg)
				if err == nil {
					f.Close()
				}
			}
			if errcode.Of(err) != errcode.Invalid {
				t.Fatalf("%s: got %v, want an invalid-argument error", tc.doc, err)
			}
		})
	}
}
