package natsink_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/esper-morph/esper/core/oona/natsink"
)

// startAuthServer starts a real nats-server with JetStream on loopback that
// requires the credentials set in opts (Username/Password or Authorization).
func startAuthServer(t *testing.T, opts server.Options) string {
	t.Helper()
	port := freePort(t)
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoSigs, opts.NoLog =
		"127.0.0.1", port, true, t.TempDir(), true, true
	s, err := server.NewServer(&opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// The sink and the follower authenticate with the configured user and
// password or token; wrong or missing credentials send and receive
// nothing, and the sink's last error says why.
func TestSinkAndFollowerAuthenticate(t *testing.T) {
	servers := []struct {
		name        string
		opts        server.Options
		right, bad  natsink.Config
		missingAuth bool
	}{
		{"user and password", server.Options{Username: "esper", Password: "s3cret"},
			natsink.Config{User: "esper", Password: "s3cret"}, natsink.Config{User: "esper", Password: "wrong"}, true},
		{"token", server.Options{Authorization: "t0ken"},
			natsink.Config{Token: "t0ken"}, natsink.Config{Token: "wrong"}, true},
	}
	for _, c := range servers {
		t.Run(c.name, func(t *testing.T) {
			url := startAuthServer(t, c.opts)
			for _, side := range []struct {
				name string
				cfg  natsink.Config
				ok   bool
			}{{"right", c.right, true}, {"wrong", c.bad, false}, {"none", natsink.Config{}, false}} {
				side.cfg.URL = url
				b := newBus(t)
				s, err := natsink.Open(b, side.cfg)
				if err != nil {
					t.Fatalf("%s: %v", side.name, err)
				}
				publishN(t, b, 0, 5)
				if side.ok {
					waitSent(t, s, 5)
					f := follow(t, natsink.FollowConfig{Config: side.cfg, Run: "nats-run"})
					seqs, _ := collect(t, f, 5)
					wantSeqs(t, seqs, 1, 5)
				} else {
					deadline := time.Now().Add(10 * time.Second)
					for !strings.Contains(strings.ToLower(s.Stats().LastError), "authorization") && time.Now().Before(deadline) {
						time.Sleep(20 * time.Millisecond)
					}
					if st := s.Stats(); st.Sent != 0 || !strings.Contains(strings.ToLower(st.LastError), "authorization") {
						t.Fatalf("%s credentials: %+v", side.name, st)
					}
					f := follow(t, natsink.FollowConfig{Config: side.cfg, Run: "nats-run"})
					deadline = time.Now().Add(10 * time.Second)
					for !strings.Contains(strings.ToLower(f.Stats().LastError), "authorization") && time.Now().Before(deadline) {
						time.Sleep(20 * time.Millisecond)
					}
					if st := f.Stats(); st.Received != 0 || st.Mode != "" ||
						!strings.Contains(strings.ToLower(st.LastError), "authorization") {
						t.Fatalf("follower, %s credentials: %+v", side.name, st)
					}
				}
				s.Close(100 * time.Millisecond)
				b.Close()
			}
		})
	}
}
