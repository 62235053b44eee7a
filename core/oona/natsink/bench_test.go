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
// and health events (about 0.5 and 4 KiB) published together, then sent
// to a local JetStream server and acknowledged. One op is one burst, timed
// until the sink has the server's acks for both.
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
		for s.Stats().Sent < sent {
			time.Sleep(20 * time.Microsecond)
		}
	}
	burst := func(i int) {
		for _, ev := range []struct {
			k oona.Kind
			d []byte
		}{{oona.KindEpoch, epoch}, {oona.KindHealth, health}} {
			if _, err := bus.Publish(oona.Header{Kind: ev.k, Actor: oona.ActorTrainer, Epoch: i}, ev.d); err != nil {
				b.Fatal(err)
			}
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
