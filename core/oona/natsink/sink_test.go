package natsink_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/core/oona/natsink"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// freePort returns a loopback port nobody listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startServer starts a real nats-server with JetStream on 127.0.0.1:port,
// storing in dir (the same dir after a restart keeps the stream).
func startServer(t testing.TB, port int, dir string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: dir,
		NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return s
}

func newBus(t testing.TB) *oona.Bus {
	t.Helper()
	b, err := oona.New(oona.Config{Run: "nats-run", Rank: 0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func publishN(t testing.TB, b *oona.Bus, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		start := time.Now()
		if _, err := b.Publish(oona.Header{Kind: oona.KindLifecycle, Actor: oona.ActorSchedule, Step: int64(i)},
			map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > 100*time.Millisecond {
			t.Fatalf("publish %d took %v: the bus waited on NATS", i, d)
		}
	}
}

// replay reads the run's events back from the stream, in order.
func replay(t testing.TB, url string, want int) []oona.Event {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, natsink.DefaultStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"esper.v1.nats-run.>"}})
	if err != nil {
		t.Fatal(err)
	}
	var out []oona.Event
	for len(out) < want {
		msg, err := cons.Next(jetstream.FetchMaxWait(3 * time.Second))
		if err != nil {
			break
		}
		var ev oona.Event
		if err := json.Unmarshal(msg.Data(), &ev); err != nil {
			t.Fatal(err)
		}
		if msg.Subject() != ev.Subject() || msg.Headers().Get(nats.MsgIdHdr) != ev.ID {
			t.Fatalf("subject %s / id header %s for %s", msg.Subject(), msg.Headers().Get(nats.MsgIdHdr), ev.ID)
		}
		out = append(out, ev)
	}
	return out
}

func waitSent(t testing.TB, s *natsink.Sink, n int64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for s.Stats().Sent < n {
		if time.Now().After(deadline) {
			t.Fatalf("sent %d of %d: %+v", s.Stats().Sent, n, s.Stats())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func checkSeqs(t testing.TB, evs []oona.Event, n int) {
	t.Helper()
	if len(evs) != n {
		t.Fatalf("replayed %d events, want %d", len(evs), n)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, ev.Seq)
		}
	}
}

func TestSinkStoresEveryEventAndDeduplicates(t *testing.T) {
	port := freePort(t)
	startServer(t, port, t.TempDir())
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	b := newBus(t)
	s, err := natsink.Open(b, natsink.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	publishN(t, b, 0, 50)
	waitSent(t, s, 50)
	evs := replay(t, url, 60)
	checkSeqs(t, evs, 50)
	// The same event id again (a retried publish) is stored once.
	nc, _ := nats.Connect(url)
	defer nc.Close()
	js, _ := jetstream.New(nc)
	dup := &nats.Msg{Subject: evs[0].Subject(), Data: []byte(`{}`), Header: nats.Header{}}
	dup.Header.Set(nats.MsgIdHdr, evs[0].ID)
	ack, err := js.PublishMsg(context.Background(), dup)
	if err != nil || !ack.Duplicate {
		t.Fatalf("republished id %s: ack %+v, err %v: want a duplicate", evs[0].ID, ack, err)
	}
	checkSeqs(t, replay(t, url, 60), 50)
}

// Events published faster than the server acknowledges them go in bursts
// (sent together, acks awaited after): each is stored once, in the bus's
// order.
func TestSinkSendsBurstsInOrder(t *testing.T) {
	port := freePort(t)
	startServer(t, port, t.TempDir())
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	b := newBus(t)
	s, err := natsink.Open(b, natsink.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	const n = 600
	for i := range n {
		if _, err := b.Publish(oona.Header{Kind: oona.KindLifecycle, Actor: oona.ActorSchedule, Step: int64(i)},
			map[string]int{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	waitSent(t, s, n)
	if st := s.Stats(); st.Dropped != 0 || st.Retries != 0 {
		t.Fatalf("stats %+v", st)
	}
	checkSeqs(t, replay(t, url, n+10), n)
}

func TestSinkSurvivesServerAbsentKilledAndRestarted(t *testing.T) {
	port := freePort(t)
	dir := t.TempDir()
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	b := newBus(t)
	// Absent at start: Open returns at once, publishing never waits.
	start := time.Now()
	s, err := natsink.Open(b, natsink.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Open took %v with no server", d)
	}
	publishN(t, b, 0, 20)
	if st := s.Stats(); st.Connected || st.Sent != 0 {
		t.Fatalf("no server, yet %+v", st)
	}
	srv := startServer(t, port, dir)
	waitSent(t, s, 20)
	publishN(t, b, 20, 20)
	waitSent(t, s, 40)
	// Killed mid-run: events wait in the backlog; restarted on the same store: they all arrive, once.
	srv.Shutdown()
	srv.WaitForShutdown()
	publishN(t, b, 40, 30)
	time.Sleep(300 * time.Millisecond)
	if st := s.Stats(); st.Sent >= 70 {
		t.Fatalf("sent %d with the server down", st.Sent)
	}
	startServer(t, port, dir)
	waitSent(t, s, 70)
	st := s.Stats()
	if st.Dropped != 0 || st.Reconnects < 1 || st.Retries < 1 {
		t.Fatalf("stats %+v", st)
	}
	checkSeqs(t, replay(t, url, 80), 70)
}

func TestSinkCountsWhatTheBacklogCannotHold(t *testing.T) {
	url := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	b := newBus(t)
	s, err := natsink.Open(b, natsink.Config{URL: url, Buffer: 5})
	if err != nil {
		t.Fatal(err)
	}
	publishN(t, b, 0, 20)
	start := time.Now()
	s.Close(300 * time.Millisecond)
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("Close took %v", d)
	}
	st := s.Stats()
	// One event in the writer's hands, 5 in the backlog, the rest dropped; nothing sent.
	if st.Sent != 0 || st.Dropped+st.Unsent != 20 || st.Dropped < 14 {
		t.Fatalf("stats %+v: want sent 0, dropped + unsent 20", st)
	}
}

func TestConfigRefusesPlaintextOffLoopback(t *testing.T) {
	b := newBus(t)
	cases := []struct {
		name string
		cfg  natsink.Config
		ok   bool
	}{
		{"no url", natsink.Config{}, false},
		{"remote plaintext", natsink.Config{URL: "nats://10.1.2.3:4222"}, false},
		{"remote creds in url", natsink.Config{URL: "nats://u:p@10.1.2.3:4222"}, false},
		{"one remote of two", natsink.Config{URL: "nats://127.0.0.1:1,nats://10.1.2.3:4222"}, false},
		{"bad buffer", natsink.Config{URL: "nats://127.0.0.1:1", Buffer: -1}, false},
		{"remote plaintext, opted in", natsink.Config{URL: "nats://10.1.2.3:4222", AllowPlaintext: true}, true},
		{"loopback", natsink.Config{URL: "nats://localhost:1"}, true},
		{"password without user", natsink.Config{URL: "nats://127.0.0.1:1", Password: "p"}, false},
		{"cert without key", natsink.Config{URL: "nats://127.0.0.1:1", Cert: "/c.pem"}, false},
		{"key without cert", natsink.Config{URL: "nats://127.0.0.1:1", Key: "/k.pem"}, false},
		{"token and user", natsink.Config{URL: "nats://127.0.0.1:1", Token: "t", User: "u", Password: "p"}, false},
		{"user and password", natsink.Config{URL: "nats://127.0.0.1:1", User: "u", Password: "p"}, true},
		{"token", natsink.Config{URL: "nats://127.0.0.1:1", Token: "t"}, true},
		{"remote token, plaintext", natsink.Config{URL: "nats://10.1.2.3:4222", Token: "t"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := natsink.Open(b, c.cfg)
			if c.ok != (err == nil) {
				t.Fatalf("Open(%+v): %v", c.cfg, err)
			}
			if err != nil && !errors.Is(err, natsink.ErrConfig) {
				t.Fatalf("err %v does not wrap ErrConfig", err)
			}
			if s != nil {
				s.Close(10 * time.Millisecond)
			}
		})
	}
	if _, err := natsink.Parse([]byte(`{"url":"nats://127.0.0.1:1","pasword":"x"}`)); !errors.Is(err, natsink.ErrConfig) {
		t.Fatalf("misspelled field accepted: %v", err)
	}
}

// FuzzParse: a NATS configuration is decoded or refused with ErrConfig.
func FuzzParse(f *testing.F) {
	for _, s := range []string{`{"url":"nats://127.0.0.1:4222"}`, `{"url":"tls://h:1","ca":"/c","buffer":5}`, `{"x":1}`, `[]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := natsink.Parse(data); err != nil && !errors.Is(err, natsink.ErrConfig) {
			t.Fatalf("refused with %v, not ErrConfig", err)
		}
	})
}

func TestMeasureLatency(t *testing.T) {
	port := freePort(t)
	startServer(t, port, t.TempDir())
	lat, err := natsink.MeasureLatency(fmt.Sprintf("nats://127.0.0.1:%d", port), 200)
	if err != nil {
		t.Fatal(err)
	}
	if lat.Events != 200 || !(lat.P50 > 0 && lat.P50 <= lat.P99 && lat.P99 <= lat.Max) {
		t.Fatalf("%+v", lat)
	}
	t.Logf("publish to receive through JetStream: %+v", lat)
	if _, err := natsink.MeasureLatency("nats://127.0.0.1:1", 0); err == nil {
		t.Fatal("0 events accepted")
	}
}

// A burst asks for one ack, its last event's: the server sends the sink's
// connection one message per burst, not one per event. The events wait in
// the backlog while the server is absent, then go in a few bursts of up
// to MaxBurst; with an ack per event the connection would receive n.
func TestSinkAsksOneAckPerBurst(t *testing.T) {
	port := freePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	b := newBus(t)
	s, err := natsink.Open(b, natsink.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	const n = 600
	publishN(t, b, 0, n)
	srv := startServer(t, port, t.TempDir())
	waitSent(t, s, n)
	checkSeqs(t, replay(t, url, n+10), n)
	cz, err := srv.Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range cz.Conns {
		if c.Name != "esper nats-run/0" {
			continue
		}
		found = true
		t.Logf("sink connection: %d messages in, %d out", c.InMsgs, c.OutMsgs)
		// n/MaxBurst bursts, and a few more for the event held and retried while the server was absent.
		if c.InMsgs < n || c.OutMsgs > n/natsink.MaxBurst+20 {
			t.Fatalf("sink connection: %d messages in, %d out (acks): want %d in and about %d acks", c.InMsgs,
				c.OutMsgs, n, n/natsink.MaxBurst)
		}
	}
	if !found {
		t.Fatalf("no connection named for the sink in %+v", cz.Conns)
	}
}
