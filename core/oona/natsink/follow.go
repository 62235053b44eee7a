package natsink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/oona"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Following a run from NATS: the other end of a Sink. A Follower receives
// the events a Sink published, as the raw lines the run log holds (it
// decodes nothing: the reader of the run log reads these too), from the
// JetStream stream when the server has it (an ordered consumer from the
// stream's first event of the subject: the run from its start, then live)
// and otherwise from a core subscription (live only, from the moment it
// subscribed).

// The follower's modes (FollowStats.Mode).
const (
	// ModeJetStream: an ordered consumer of the stream, from its start.
	ModeJetStream = "jetstream"
	// ModeCore: a core subscription to the subject (no stream on the
	// server): the events published from the moment it subscribed.
	ModeCore = "core"
)

// MaxPoll bounds the events one Poll returns.
const MaxPoll = 10000

// FollowConfig configures a Follower: the connection of Config (URL,
// credentials, TLS, AllowPlaintext, Stream; Buffer is the follower's
// buffer, in events) and what to follow: Subject, or by default the
// subjects of Run's rank Rank, "esper.v1.<run>.<rank>.>".
type FollowConfig struct {
	Config
	Run     string `json:"run,omitempty"`
	Rank    int    `json:"rank,omitempty"`
	Subject string `json:"subject,omitempty"`
}

// ParseFollow decodes a FollowConfig strictly (unknown fields are errors).
func ParseFollow(data []byte) (FollowConfig, error) {
	var c FollowConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("natsink: follow config: %v: %w", err, ErrConfig)
	}
	if dec.More() {
		return c, fmt.Errorf("natsink: follow config: trailing data: %w", ErrConfig)
	}
	return c, nil
}

// subject returns the subject to follow, checking it.
func (c FollowConfig) subject() (string, error) {
	if c.Subject == "" {
		if err := oona.CheckRun(c.Run); err != nil {
			return "", fmt.Errorf("natsink: follow: give a run or a subject: %w", err)
		}
		if c.Rank < 0 {
			return "", fmt.Errorf("natsink: follow: rank %d must be >= 0: %w", c.Rank, ErrConfig)
		}
		return "esper.v1." + c.Run + "." + strconv.Itoa(c.Rank) + ".>", nil
	}
	if c.Run != "" {
		return "", fmt.Errorf("natsink: follow: give a run or a subject, not both: %w", ErrConfig)
	}
	for i, tok := range strings.Split(c.Subject, ".") {
		if tok == "" || strings.ContainsAny(tok, " \t\r\n") || (strings.Contains(tok, ">") && tok != ">") ||
			(tok == ">" && i != strings.Count(c.Subject, ".")) {
			return "", fmt.Errorf("natsink: follow: subject %q is not a NATS subject (dot-separated tokens, "+
				"* for one token, > for the rest): %w", c.Subject, ErrConfig)
		}
	}
	return c.Subject, nil
}

// FollowStats is a follower's state and counts.
type FollowStats struct {
	// URL is the server (credentials removed), Subject what is followed,
	// Stream the stream looked up; Mode is ModeJetStream, ModeCore, or ""
	// before the first connection; Connected says whether it is up now.
	URL       string `json:"url"`
	Subject   string `json:"subject"`
	Stream    string `json:"stream"`
	Mode      string `json:"mode"`
	Connected bool   `json:"connected"`
	// Received counts the events handed out by Poll; Skipped the messages
	// that were not JSON (not events); Dropped those a core subscription
	// lost because the follower fell behind (a consumer of the stream
	// waits instead).
	Received int64 `json:"received"`
	Skipped  int64 `json:"skipped"`
	Dropped  int64 `json:"dropped"`
	// Pending is how many of the subject's messages the stream holds
	// that Poll has not handed out yet (JetStream only; -1: not known):
	// until the messages the stream held when the follower started are
	// handed out, those left of them, then the count beyond the last one.
	// 0 means the follower has caught up with what was published so far.
	Pending   int64  `json:"pending"`
	LastError string `json:"last_error,omitempty"`
}

// Batch is what one Poll returns: the events received, oldest first, as
// the JSON lines the run log holds, and the follower's state after them.
type Batch struct {
	Events []json.RawMessage `json:"events"`
	FollowStats
}

type followed struct {
	data    []byte
	pending int64
}

// Follower receives one run's events (or a subject's) from NATS.
type Follower struct {
	cfg     Config
	shown   string
	subject string
	nc      *nats.Conn
	js      jetstream.JetStream
	ch      chan followed
	stop    chan struct{}
	done    chan struct{}

	received, skipped atomic.Int64
	// initial is how many of the subject's messages the stream held when
	// the consumer started (-1: not known); pending the stream's count
	// beyond the last message handed out (-1: none handed out yet).
	initial, pending atomic.Int64
	lastErr          atomic.Pointer[string]

	// mu guards mode, cc and sub (set once by the starting goroutine,
	// released by Close).
	mu   sync.Mutex
	mode string
	cc   jetstream.ConsumeContext
	sub  *nats.Subscription

	closeOnce sync.Once
}

// Follow connects to cfg.URL (in the background: a server that is absent
// now is tried again and again) and starts following once connected.
func Follow(cfg FollowConfig) (*Follower, error) {
	shown, err := checkURL(cfg.Config)
	if err != nil {
		return nil, err
	}
	subject, err := cfg.subject()
	if err != nil {
		return nil, err
	}
	if cfg.Stream == "" {
		cfg.Stream = DefaultStream
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = DefaultBuffer
	}
	if cfg.Buffer < 1 || cfg.Buffer > oona.MaxBuffer {
		return nil, fmt.Errorf("natsink: follow: buffer %d must be in [1, %d]: %w", cfg.Buffer, oona.MaxBuffer, ErrConfig)
	}
	f := &Follower{cfg: cfg.Config, shown: shown, subject: subject, ch: make(chan followed, cfg.Buffer),
		stop: make(chan struct{}), done: make(chan struct{})}
	f.pending.Store(-1)
	f.initial.Store(-1)
	opts := []nats.Option{
		nats.Name("esper follow " + subject),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(200 * time.Millisecond),
		nats.Timeout(2 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				f.fail(fmt.Errorf("natsink: follow: disconnected: %w", err))
			}
		}),
		nats.NoCallbacksAfterClientClose(),
	}
	nc, err := nats.Connect(cfg.URL, append(opts, authOptions(cfg.Config)...)...)
	if err != nil {
		return nil, fmt.Errorf("natsink: follow: connect %s: %v: %w", shown, err, errcode.ErrUnavailable)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("natsink: follow: jetstream: %v: %w", err, errcode.ErrUnavailable)
	}
	f.nc, f.js = nc, js
	go f.run()
	return f, nil
}

func (f *Follower) fail(err error) {
	msg := err.Error()
	f.lastErr.Store(&msg)
}

// run starts following once the connection is up, retrying with backoff.
func (f *Follower) run() {
	defer close(f.done)
	backoff := 50 * time.Millisecond
	for {
		if f.nc.IsConnected() {
			err := f.start()
			if err == nil {
				return
			}
			f.fail(err)
		} else if err := f.nc.LastError(); err != nil { // e.g. "nats: authorization violation"
			f.fail(fmt.Errorf("natsink: follow: not connected to %s: %w", f.shown, err))
		}
		select {
		case <-f.stop:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// start looks the stream up and consumes it, or subscribes to the subject
// when the server has no such stream (or no JetStream).
func (f *Follower) start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := f.js.Stream(ctx, f.cfg.Stream)
	switch {
	case err == nil:
		cons, err := f.js.OrderedConsumer(ctx, f.cfg.Stream, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{f.subject}, DeliverPolicy: jetstream.DeliverAllPolicy})
		if err != nil {
			return fmt.Errorf("natsink: follow: consumer of %s: %w", f.cfg.Stream, err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			pending := int64(-1)
			if md, err := m.Metadata(); err == nil {
				pending = int64(md.NumPending)
			}
			f.deliver(m.Data(), pending)
		}, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			f.fail(fmt.Errorf("natsink: follow: %w", err))
		}))
		if err != nil {
			return fmt.Errorf("natsink: follow: consume %s: %w", f.cfg.Stream, err)
		}
		if info, err := cons.Info(ctx); err == nil {
			f.initial.Store(int64(info.NumPending + info.Delivered.Consumer))
		}
		f.mu.Lock()
		f.mode, f.cc = ModeJetStream, cc
		f.mu.Unlock()
		return nil
	case errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, nats.ErrNoResponders): // a server without JetStream answers nothing
		sub, err := f.nc.Subscribe(f.subject, func(m *nats.Msg) { f.deliver(m.Data, -1) })
		if err != nil {
			return fmt.Errorf("natsink: follow: subscribe %s: %w", f.subject, err)
		}
		if err := f.nc.FlushWithContext(ctx); err != nil {
			_ = sub.Unsubscribe()
			return fmt.Errorf("natsink: follow: subscribe %s: %w", f.subject, err)
		}
		f.mu.Lock()
		f.mode, f.sub = ModeCore, sub
		f.mu.Unlock()
		return nil
	default:
		return fmt.Errorf("natsink: follow: stream %s: %w", f.cfg.Stream, err)
	}
}

// deliver hands one message to Poll, waiting while the buffer is full.
func (f *Follower) deliver(data []byte, pending int64) {
	if !json.Valid(data) {
		f.skipped.Add(1)
		return
	}
	select {
	case f.ch <- followed{data: bytes.Clone(data), pending: pending}:
	case <-f.stop:
	}
}

// Poll waits at most wait (or until ctx is done) for an event, then
// returns it with every other one already received, at most limit
// (clamped to [1, MaxPoll]).
func (f *Follower) Poll(ctx context.Context, wait time.Duration, limit int) Batch {
	limit = min(MaxPoll, max(1, limit))
	var b Batch
	add := func(it followed) {
		b.Events = append(b.Events, json.RawMessage(it.data))
		if it.pending >= 0 {
			f.pending.Store(it.pending)
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case it := <-f.ch:
		add(it)
	case <-t.C:
	case <-ctx.Done():
	}
more:
	for len(b.Events) < limit {
		select {
		case it := <-f.ch:
			add(it)
		default:
			break more
		}
	}
	if b.Events == nil {
		b.Events = []json.RawMessage{}
	}
	f.received.Add(int64(len(b.Events)))
	b.FollowStats = f.Stats()
	return b
}

// Stats returns the follower's state and counts.
func (f *Follower) Stats() FollowStats {
	st := FollowStats{URL: f.shown, Subject: f.subject, Stream: f.cfg.Stream, Connected: f.nc.IsConnected(),
		Received: f.received.Load(), Skipped: f.skipped.Load(), Pending: f.pending.Load()}
	if initial := f.initial.Load(); initial >= 0 {
		if left := initial - st.Received - st.Skipped; left > 0 {
			st.Pending = left
		} else if st.Pending < 0 {
			st.Pending = 0 // the stream held nothing of the subject
		}
	}
	f.mu.Lock()
	st.Mode = f.mode
	if f.sub != nil {
		if n, err := f.sub.Dropped(); err == nil {
			st.Dropped = int64(n)
		}
	}
	f.mu.Unlock()
	if p := f.lastErr.Load(); p != nil {
		st.LastError = *p
	}
	return st
}

// Close stops following and closes the connection. It may be called
// again.
func (f *Follower) Close() {
	f.closeOnce.Do(func() {
		close(f.stop)
		<-f.done
		f.mu.Lock()
		if f.cc != nil {
			f.cc.Stop()
		}
		if f.sub != nil {
			_ = f.sub.Unsubscribe()
		}
		f.mu.Unlock()
		f.nc.Close()
	})
}
