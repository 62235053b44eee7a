package natsink_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/core/oona/natsink"
)

// BenchmarkEpochBurst is what the sink does at an end of epoch: the epoch
// and health events (about 0.5 and 4 KiB) published together
// (PublishAll), then sent to a local JetStream server and acknowledged.
// One op is one burst, timed until the sink has the server's ack for the
// burst before it (the sink takes an ack when it wakes for the next
// burst) and has sent this one.
func BenchmarkEpochBurst(b *testing.B) {
	port := freePort(b)
	startServer(b, port, b.TempDir())
	bus := newBus(b)
	s, err := natsink.Open(bus, natsink.Config{URL: fmt.Sprintf("nats://127.0.0.1:%d", port)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(5 * time.Second) })
	epoch := []byte(`{"metrics":{"epoch":1,"train_loss":0.5,"val_loss":1,"val_metric":null},"decisions":0,"pad":"` +
		strings.Repeat("x", 400) + `"}`)
	health := []byte(`{"layers":"` + strings.Repeat("y", 4000) + `"}`)
	sent := int64(0)
	wait := func() {
		for st := s.Stats(); st.Sent < sent-2 || st.Bursts < sent/2; st = s.Stats() {
			time.Sleep(20 * time.Microsecond)
		}
	}
	burst := func(i int) {
		if err := bus.PublishAll([]oona.Record{
			{Header: oona.Header{Kind: oona.KindEpoch, Actor: oona.ActorTrainer, Epoch: i}, Data: epoch},
			{Header: oona.Header{Kind: oona.KindHealth, Actor: oona.ActorTrainer, Epoch: i}, Data: health}}); err != nil {
			b.Fatal(err)
		}
		sent += 2
		wait()
	}
	for i := range 20 {
		burst(i)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		burst(i)
	}
}
