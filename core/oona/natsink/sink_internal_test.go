package natsink

import (
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/oona"
	"github.com/nats-io/nats-server/v2/server"
)

// waitFor polls cond until it holds, failing after 10 s with what.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// An end of epoch's events, published together, cost the writer one wake:
// it sends them as one burst and sleeps again without waiting for the
// ack, which waits in its channel until the next burst wakes it (or was
// there already when it looked, right after sending). A writer that waits
// for the ack after sending would wait each time here (ackWaits). The
// server sends the sink's connection one message per burst; Close waits
// for the last burst's ack. The writer's clock is stopped here (a period
// of an hour), so every wake counted is one the bus asked for.
func TestSinkTakesTheAckWhenItNextWakes(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true,
		StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	defer srv.Shutdown()
	b, err := oona.New(oona.Config{Run: "wakes", Rank: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	s, err := open(b, Config{URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	waitFor(t, "the connection", s.nc.IsConnected)
	waitFor(t, "the writer's first wake (Open's)", func() bool { return s.wakes.Load() == 1 })
	const n = 30
	untaken := 0 // acks seen waiting in the channel while the writer slept
	for i := range n {
		if err := b.PublishAll([]oona.Record{
			{Header: oona.Header{Kind: oona.KindEpoch, Actor: oona.ActorTrainer, Epoch: i}, Data: map[string]int{"e": i}},
			{Header: oona.Header{Kind: oona.KindHealth, Actor: oona.ActorTrainer, Epoch: i}, Data: map[string]int{"h": i}},
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("burst %d", i+1), func() bool { return s.bursts.Load() == int64(i+1) })
		waitFor(t, fmt.Sprintf("burst %d's ack", i+1), func() bool {
			return len(s.ackCh) == 1 || s.sent.Load() == int64(2*(i+1))
		})
		if len(s.ackCh) == 1 {
			untaken++
			if st := s.Stats(); st.Sent != int64(2*i) || st.Pending != 2 {
				t.Fatalf("burst %d: %+v: want the bursts before it sent, its 2 events pending", i+1, st)
			}
		}
		if w := s.wakes.Load(); w != int64(i+2) {
			t.Fatalf("after burst %d the writer woke %d times, want %d (one per burst, one at Open)", i+1, w, i+2)
		}
	}
	if w := s.ackWaits.Load(); w != 0 {
		t.Fatalf("the writer waited %d times for an ack after sending, want 0", w)
	}
	t.Logf("%d of %d acks seen waiting in the channel while the writer slept", untaken, n)
	cz, err := srv.Connz(&server.ConnzOptions{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range cz.Conns {
		if c.Name != "esper wakes/0" {
			continue
		}
		found = true
		// 2n events and the stream's creation (a request or two) in; an ack
		// per burst and the creation's replies out.
		if k := c.InMsgs - 2*n; k < 1 || k > 3 || c.OutMsgs != n+k {
			t.Fatalf("sink connection: %d messages in, %d out: want 2n+k and n+k for n = %d, k in [1, 3]", c.InMsgs,
				c.OutMsgs, n)
		}
	}
	if !found {
		t.Fatalf("no connection named for the sink in %+v", cz.Conns)
	}
	s.Close(5 * time.Second)
	if st := s.Stats(); st.Sent != 2*n || st.Bursts != n || st.Pending != 0 || st.Unsent != 0 || st.Retries != 0 {
		t.Fatalf("after Close: %+v", st)
	}
}
