package oona

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of Config and Subscribe.
const (
	// MaxRunLen bounds a run id.
	MaxRunLen = 128
	// MaxRank bounds a rank.
	MaxRank = 1 << 20
	// DefaultBuffer is a subscriber's buffer when Subscribe is given 0.
	DefaultBuffer = 1024
	// MaxBuffer bounds a subscriber's buffer (events).
	MaxBuffer = 1 << 20
)

// Config configures a Bus.
type Config struct {
	// Run is the run id: 1 to 128 characters from [A-Za-z0-9_-] (it is a
	// NATS subject token and a directory name). Required.
	Run string `json:"run"`
	// Rank is the process's rank in a multi-process run (0 for one
	// process), in [0, 1<<20].
	Rank int `json:"rank"`
}

// CheckRun returns an error wrapping ErrConfig unless run is a valid run
// id (see Config.Run).
func CheckRun(run string) error {
	if run == "" || len(run) > MaxRunLen {
		return fmt.Errorf("oona: run id %q must be 1 to %d characters: %w", run, MaxRunLen, ErrConfig)
	}
	for _, c := range []byte(run) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("oona: run id %q may hold only letters, digits, '_' and '-': %w", run, ErrConfig)
		}
	}
	return nil
}

// Bus is one run's in-process publish/subscribe bus (see the package doc).
type Bus struct {
	// Set at New and never changed.
	run    string
	rank   int
	prefix string // this bus's random id: event ids are prefix-seq
	now    func() time.Time

	published atomic.Int64
	delivered atomic.Int64
	dropped   atomic.Int64

	// mu guards seq, subs and closed; Publish holds it while it numbers an
	// event and hands it to the subscribers, so every subscriber sees the
	// events in sequence order.
	mu     sync.Mutex
	seq    uint64
	subs   []*Subscription
	closed bool
}

// Option configures a Bus beyond its Config.
type Option func(*Bus)

// WithClock makes the bus stamp events with now() instead of time.Now()
// (tests use a fixed clock).
func WithClock(now func() time.Time) Option { return func(b *Bus) { b.now = now } }

// New returns a bus for cfg; cfg is checked first.
func New(cfg Config, opts ...Option) (*Bus, error) {
	if err := CheckRun(cfg.Run); err != nil {
		return nil, err
	}
	if cfg.Rank < 0 || cfg.Rank > MaxRank {
		return nil, fmt.Errorf("oona: rank %d must be in [0, %d]: %w", cfg.Rank, MaxRank, ErrConfig)
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("oona: bus id: %w", err)
	}
	b := &Bus{run: cfg.Run, rank: cfg.Rank, prefix: hex.EncodeToString(id[:]), now: time.Now}
	for _, o := range opts {
		o(b)
	}
	return b, nil
}

// Run returns the bus's run id.
func (b *Bus) Run() string { return b.run }

// Rank returns the bus's rank.
func (b *Bus) Rank() int { return b.rank }

// Publish stamps an event with h and data (a JSON object: a value
// encoding/json encodes as one, or json.RawMessage / []byte holding one;
// nil means {}) and hands it to every subscriber without blocking: a
// subscriber whose buffer is full misses it (counted in Stats). It returns
// the event published. A closed bus returns ErrClosed; a bad kind, actor
// or data returns an error wrapping ErrEvent, and nothing is published.
func (b *Bus) Publish(h Header, data any) (*Event, error) {
	ev, buf, err := prepare(h, data)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("oona: publish %s: %w", h.Kind, ErrClosed)
	}
	b.stampLocked(ev, buf)
	b.deliverLocked([]*Event{ev})
	return ev, nil
}

// Record is one event for PublishAll: its header and data, as Publish
// takes them.
type Record struct {
	Header Header
	Data   any
}

// PublishAll publishes recs as Publish would, in order, and hands them to
// each subscriber together: a subscriber woken by the first (its OnFirst
// hook, or its half-full signal) is woken once, after all of them are in
// its buffer, and takes them in one burst (an end of epoch publishes its
// epoch and health events so, and the NATS sink sends them with one ack).
// Every record is checked and encoded before any is published; one that
// is refused (as Publish refuses it) is left out and its error returned,
// joined with the others', while the rest are published. A closed bus
// publishes none and returns ErrClosed.
func (b *Bus) PublishAll(recs []Record) error {
	var evArr [4]*Event // an end of epoch's events fit: no allocation for the slices
	var bufArr [4][]byte
	evs, bufs := evArr[:0], bufArr[:0]
	var errs []error
	for _, r := range recs {
		ev, buf, err := prepare(r.Header, r.Data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		evs, bufs = append(evs, ev), append(bufs, buf)
	}
	if len(evs) > 0 {
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return fmt.Errorf("oona: publish %d events: %w", len(evs), ErrClosed)
		}
		for i, ev := range evs {
			b.stampLocked(ev, bufs[i])
		}
		b.deliverLocked(evs)
		b.mu.Unlock()
	}
	return errors.Join(errs...)
}

// prepare checks h and encodes data: the event, less what stampLocked
// sets, and its data's bytes.
func prepare(h Header, data any) (*Event, []byte, error) {
	if !h.Kind.Valid() {
		return nil, nil, fmt.Errorf("oona: publish: kind %q is not one of %v: %w", h.Kind, kinds, ErrEvent)
	}
	if !h.Actor.Valid() {
		return nil, nil, fmt.Errorf("oona: publish: actor %q is not one of %v: %w", h.Actor, actors, ErrEvent)
	}
	buf, err := encodeData(data)
	if err != nil {
		return nil, nil, fmt.Errorf("oona: publish %s: %w", h.Kind, err)
	}
	return &Event{V: SchemaVersion, Kind: h.Kind, Actor: h.Actor, Step: h.Step, Epoch: h.Epoch}, buf, nil
}

// stampLocked numbers ev, gives it the bus's run, rank, id and time, and
// encodes its line with buf, its data (under mu).
func (b *Bus) stampLocked(ev *Event, buf []byte) {
	b.seq++
	ev.Run, ev.Rank, ev.Seq = b.run, b.rank, b.seq
	ev.ID = b.prefix + "-" + strconv.FormatUint(b.seq, 10)
	ev.Time = b.now().UTC()
	ev.encode(buf)
	b.published.Add(1)
}

// deliverLocked puts evs, in order, in every subscriber's buffer that has
// room (under mu), then calls the OnFirst hook of each subscriber whose
// buffer one of them found empty, and signals HalfFull where one of them
// took the buffer past half full: once per subscriber, after all of evs
// are in its buffer.
func (b *Bus) deliverLocked(evs []*Event) {
	for _, s := range b.subs {
		first, half := false, false
		for _, ev := range evs {
			select {
			case s.ch <- ev:
				s.delivered.Add(1)
				b.delivered.Add(1)
				n := len(s.ch)
				first = first || n == 1
				half = half || n == cap(s.ch)/2+1
			default:
				s.dropped.Add(1)
				b.dropped.Add(1)
			}
		}
		if first && s.first != nil {
			s.first()
		}
		if half {
			select {
			case s.half <- struct{}{}:
			default:
			}
		}
	}
}

// Subscribe adds a subscriber named name (for Stats) with a buffer of
// buffer events (0: DefaultBuffer). It receives every event published
// from now on, in order, on C(), except those that find its buffer full.
func (b *Bus) Subscribe(name string, buffer int) (*Subscription, error) {
	if buffer == 0 {
		buffer = DefaultBuffer
	}
	if buffer < 1 || buffer > MaxBuffer {
		return nil, fmt.Errorf("oona: subscribe %q: buffer %d must be in [1, %d]: %w", name, buffer, MaxBuffer, ErrConfig)
	}
	s := &Subscription{name: name, bus: b, ch: make(chan *Event, buffer), half: make(chan struct{}, 1)}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("oona: subscribe %q: %w", name, ErrClosed)
	}
	b.subs = append(b.subs, s)
	return s, nil
}

// Close closes the bus: every subscriber's channel is closed (after the
// events already in its buffer), and Publish and Subscribe fail from now
// on. Close may be called again.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	for _, s := range b.subs {
		close(s.ch)
	}
	b.subs = nil
}

// SubscriberStats is one subscriber's counts.
type SubscriberStats struct {
	Name string `json:"name"`
	// Delivered counts events put in its buffer, Dropped those that found
	// it full; Pending is the number waiting in it now, of Buffer.
	Delivered int64 `json:"delivered"`
	Dropped   int64 `json:"dropped"`
	Pending   int   `json:"pending"`
	Buffer    int   `json:"buffer"`
}

// Stats is a bus's counts.
type Stats struct {
	Run  string `json:"run"`
	Rank int    `json:"rank"`
	// Published counts events published; Delivered and Dropped count, over
	// every subscriber there ever was, events put in a subscriber's buffer
	// and events a full buffer refused.
	Published int64 `json:"published"`
	Delivered int64 `json:"delivered"`
	Dropped   int64 `json:"dropped"`
	// Subscribers are the current subscribers.
	Subscribers []SubscriberStats `json:"subscribers"`
}

// Stats returns the bus's counts.
func (b *Bus) Stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := Stats{Run: b.run, Rank: b.rank, Published: b.published.Load(), Delivered: b.delivered.Load(),
		Dropped: b.dropped.Load(), Subscribers: make([]SubscriberStats, 0, len(b.subs))}
	for _, s := range b.subs {
		st.Subscribers = append(st.Subscribers, s.statsLocked())
	}
	return st
}

// Subscription is one subscriber of a Bus.
type Subscription struct {
	name      string
	bus       *Bus
	ch        chan *Event
	half      chan struct{}
	first     func() // OnFirst's hook, under the bus's lock
	delivered atomic.Int64
	dropped   atomic.Int64
}

// C returns the channel the subscriber reads; it is closed by Close (of
// the subscription or the bus) after the events in the buffer.
func (s *Subscription) C() <-chan *Event { return s.ch }

// HalfFull receives when an event published takes the buffer past half
// full: a subscriber that reads in bursts (the run log) reads then, before
// events are dropped.
func (s *Subscription) HalfFull() <-chan struct{} { return s.half }

// OnFirst makes Publish call f each time an event lands in this
// subscription's empty buffer (PublishAll: once, after the last of its
// events), in the publisher's goroutine and under the bus's lock (f must be quick, and must not publish or block). A
// subscriber that takes its events in bursts starts its clock there, so
// that it need not wake on a clock while nothing comes. nil removes the
// hook.
func (s *Subscription) OnFirst(f func()) {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	s.first = f
}

// Stats returns the subscriber's counts.
func (s *Subscription) Stats() SubscriberStats {
	s.bus.mu.Lock()
	defer s.bus.mu.Unlock()
	return s.statsLocked()
}

func (s *Subscription) statsLocked() SubscriberStats {
	return SubscriberStats{Name: s.name, Delivered: s.delivered.Load(), Dropped: s.dropped.Load(),
		Pending: len(s.ch), Buffer: cap(s.ch)}
}

// Close removes the subscriber from its bus and closes its channel (the
// events already in the buffer can still be read). It may be called again.
func (s *Subscription) Close() {
	b := s.bus
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, o := range b.subs {
		if o == s {
			b.subs = append(b.subs[:i], b.subs[i+1:]...)
			close(s.ch)
			return
		}
	}
}
