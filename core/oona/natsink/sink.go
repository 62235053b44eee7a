package natsink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
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

// Defaults of Config.
const (
	// DefaultStream is the JetStream stream events are stored in.
	DefaultStream = "ESPER_EVENTS"
	// DefaultBuffer is the backlog, in events, kept while the server is
	// unreachable.
	DefaultBuffer = 10000
	// DefaultDuplicates is the stream's deduplication window.
	DefaultDuplicates = 10 * time.Minute
)

// ErrConfig is returned for a malformed or unsafe configuration.
var ErrConfig = errcode.New(errcode.Invalid, "natsink: bad config")

// Parse decodes a Config strictly (unknown fields are errors).
func Parse(data []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("natsink: config: %v: %w", err, ErrConfig)
	}
	if dec.More() {
		return c, fmt.Errorf("natsink: config: trailing data: %w", ErrConfig)
	}
	return c, nil
}

// Config configures a Sink.
type Config struct {
	// URL is the server ("nats://127.0.0.1:4222", "tls://host:4222"; a
	// comma-separated list for a cluster). Required.
	URL string `json:"url"`
	// Creds is a credentials file (JWT and nkey); User and Password, or
	// Token, are the other ways to authenticate.
	Creds    string `json:"creds,omitempty"`
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
	Token    string `json:"token,omitempty"`
	// CA, Cert and Key configure TLS: the CA that signed the server's
	// certificate, and a client certificate and key.
	CA   string `json:"ca,omitempty"`
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// AllowPlaintext permits a connection without TLS to a host other
	// than loopback (events, and a password or token, then cross the
	// network in clear). Default false.
	AllowPlaintext bool `json:"allow_plaintext,omitempty"`
	// Stream is the JetStream stream (created if absent, capturing
	// "esper.v1.>"). Default ESPER_EVENTS.
	Stream string `json:"stream,omitempty"`
	// Buffer is the backlog in events (the subscription's buffer).
	// Default 10000.
	Buffer int `json:"buffer,omitempty"`
}

// Stats is a sink's counts.
type Stats struct {
	// URL is the server (credentials removed); Connected says whether the
	// connection is up now.
	URL       string `json:"url"`
	Connected bool   `json:"connected"`
	// Sent counts events the server acknowledged (stored); Bursts counts
	// the bursts sent (each asks for one ack, its last event's); Retries
	// counts failed attempts; Unsent counts events left in the backlog at
	// Close.
	Sent    int64 `json:"sent"`
	Bursts  int64 `json:"bursts"`
	Retries int64 `json:"retries"`
	Unsent  int64 `json:"unsent"`
	// Dropped counts events that found the backlog full (the bus's count
	// for this subscriber); Pending those not yet acknowledged: waiting in
	// the backlog, or taken by the sink and sent or about to be.
	Dropped int64 `json:"dropped"`
	Pending int   `json:"pending"`
	// Reconnects counts the connection's reconnections (the client's own
	// count, updated before publishing resumes); LastError is the last
	// failure.
	Reconnects int64  `json:"reconnects"`
	LastError  string `json:"last_error,omitempty"`
}

// Sink publishes a bus's events to NATS JetStream.
type Sink struct {
	cfg   Config
	shown string
	sub   *oona.Subscription
	nc    *nats.Conn
	js    jetstream.JetStream
	stop  chan struct{}
	done  chan struct{}

	// kick wakes the writer: an event landed in the subscription's empty
	// buffer (its OnFirst hook: once per Publish or PublishAll), or Close.
	kick chan struct{}

	// ackCh receives the stream's ack of each burst's last event, on the
	// subject inbox.<burst> (a channel subscription: the client's reader
	// puts an ack in it, and wakes nobody unless the writer waits on it).
	// burst numbers the bursts, so that a late ack of an earlier one is
	// told apart.
	acks  *nats.Subscription
	ackCh chan *nats.Msg
	inbox string
	burst uint64

	// The writer goroutine's own state: held are the events taken from the
	// subscription and not yet acknowledged (at most MaxBurst), of which
	// the first flying were sent at sentAt and wait for the ack on reply;
	// cut is the error that stopped that burst before the rest of held.
	// clock wakes it every every (confirmEvery) while clockOn.
	held    []*oona.Event
	flying  int
	reply   string
	sentAt  time.Time
	cut     error
	every   time.Duration
	clock   *time.Ticker
	clockOn bool

	// closing is set by Close: the writer then waits for the ack of its
	// last burst instead of sleeping.
	closing atomic.Bool

	sent, bursts, retries, unsent, holding atomic.Int64
	lastErr                                atomic.Pointer[string]
	// wakes counts the writer's returns from its wait, ackWaits the times
	// it waited for an ack that had not come (tests).
	wakes, ackWaits atomic.Int64

	// streamMu guards streamReady (the writer's own flag, also reset by
	// the reconnect handler).
	streamMu    sync.Mutex
	streamReady bool

	closeOnce sync.Once
}

// checkURL refuses plaintext to a non-loopback host without the opt-in,
// and credentials that cannot be used as given (checkAuth).
func checkURL(cfg Config) (string, error) {
	if cfg.URL == "" {
		return "", fmt.Errorf("natsink: url is required: %w", ErrConfig)
	}
	if err := checkAuth(cfg); err != nil {
		return "", err
	}
	var shown []string
	for _, raw := range strings.Split(cfg.URL, ",") {
		raw = strings.TrimSpace(raw)
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return "", fmt.Errorf("natsink: url %q: want nats://host:port or tls://host:port: %w", raw, ErrConfig)
		}
		host := u.Hostname()
		tlsOn := u.Scheme == "tls" || cfg.CA != "" || cfg.Cert != ""
		if !tlsOn && !cfg.AllowPlaintext && !loopback(host) {
			return "", fmt.Errorf("natsink: %s is not loopback and the connection has no TLS: use tls:// (and ca), "+
				"or set allow_plaintext to send events in clear: %w", host, ErrConfig)
		}
		if u.User != nil && !tlsOn && !loopback(host) && !cfg.AllowPlaintext {
			return "", fmt.Errorf("natsink: credentials in a plaintext url: %w", ErrConfig)
		}
		u.User = nil
		shown = append(shown, u.String())
	}
	return strings.Join(shown, ","), nil
}

// checkAuth refuses a password without a user, a client certificate
// without its key (or a key alone), and more than one way to authenticate.
func checkAuth(cfg Config) error {
	if cfg.Password != "" && cfg.User == "" {
		return fmt.Errorf("natsink: a password needs its user: %w", ErrConfig)
	}
	if (cfg.Cert == "") != (cfg.Key == "") {
		return fmt.Errorf("natsink: a TLS client certificate needs its key (give cert and key): %w", ErrConfig)
	}
	ways := 0
	for _, set := range []bool{cfg.Creds != "", cfg.User != "", cfg.Token != ""} {
		if set {
			ways++
		}
	}
	if ways > 1 {
		return fmt.Errorf("natsink: give one way to authenticate (a creds file, a user and password, or a token): %w",
			ErrConfig)
	}
	return nil
}

// authOptions returns cfg's credentials and TLS as connection options.
func authOptions(cfg Config) []nats.Option {
	var opts []nats.Option
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.CA != "" {
		opts = append(opts, nats.RootCAs(cfg.CA))
	}
	if cfg.Cert != "" || cfg.Key != "" {
		opts = append(opts, nats.ClientCert(cfg.Cert, cfg.Key))
	}
	return opts
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Open connects to cfg.URL (in the background: a server that is absent
// now is tried again and again) and subscribes the sink to b.
func Open(b *oona.Bus, cfg Config) (*Sink, error) { return open(b, cfg, confirmEvery) }

// open is Open with the writer's clock period while a burst flies (tests
// stop it with a long one).
func open(b *oona.Bus, cfg Config, every time.Duration) (*Sink, error) {
	shown, err := checkURL(cfg)
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
		return nil, fmt.Errorf("natsink: buffer %d must be in [1, %d]: %w", cfg.Buffer, oona.MaxBuffer, ErrConfig)
	}
	s := &Sink{cfg: cfg, shown: shown, stop: make(chan struct{}), done: make(chan struct{}),
		kick: make(chan struct{}, 1), ackCh: make(chan *nats.Msg, ackBuffer), held: make([]*oona.Event, 0, MaxBurst)}
	opts := []nats.Option{
		nats.Name("esper " + b.Run() + "/" + fmt.Sprint(b.Rank())),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(200 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, 100*time.Millisecond),
		nats.Timeout(2 * time.Second),
		nats.ReconnectBufSize(-1), // no second buffer: the backlog is the subscription's
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				s.fail(fmt.Errorf("natsink: disconnected: %w", err))
			}
			s.setStream(false)
		}),
		nats.NoCallbacksAfterClientClose(),
	}
	nc, err := nats.Connect(cfg.URL, append(opts, authOptions(cfg)...)...)
	if err != nil {
		return nil, fmt.Errorf("natsink: connect %s: %v: %w", shown, err, errcode.ErrUnavailable)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("natsink: jetstream: %v: %w", err, errcode.ErrUnavailable)
	}
	s.inbox = nc.NewInbox()
	// Registered now and sent to the server on every (re)connection.
	acks, err := nc.ChanSubscribe(s.inbox+".*", s.ackCh)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("natsink: ack subscription: %v: %w", err, errcode.ErrUnavailable)
	}
	s.acks = acks
	sub, err := b.Subscribe("nats", cfg.Buffer)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("natsink: %w", err)
	}
	s.nc, s.js, s.sub = nc, js, sub
	s.every = every
	s.clock = time.NewTicker(every)
	s.clock.Stop()
	sub.OnFirst(s.wake)
	s.wake() // for events published before the hook was set
	go s.run()
	return s, nil
}

func (s *Sink) setStream(ok bool) {
	s.streamMu.Lock()
	s.streamReady = ok
	s.streamMu.Unlock()
}

func (s *Sink) streamOK() bool {
	s.streamMu.Lock()
	defer s.streamMu.Unlock()
	return s.streamReady
}

func (s *Sink) fail(err error) {
	msg := err.Error()
	if p := s.lastErr.Swap(&msg); p == nil || *p != msg {
		slog.Debug("esper oona: nats", "err", err)
	}
}

// MaxBurst bounds the events the writer sends before it waits for their
// ack.
const MaxBurst = 256

// ackWait bounds the wait for a burst's ack (a lost ack is then an error,
// and the burst is sent again whole).
const ackWait = 2 * time.Second

// confirmEvery is the writer's clock while a burst waits for its ack: the
// ack of a burst is taken when the writer next wakes, for the next
// events or at the next tick of this clock, whichever comes first (a
// tick also finds an ack that did not come in ackWait).
const confirmEvery = 250 * time.Millisecond

// ackBuffer is the room for acks not yet taken (one per burst; a late ack
// of an earlier burst is skipped).
const ackBuffer = 64

// wake is the subscription's OnFirst hook (under the bus's lock: it must
// not block).
func (s *Sink) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// errStopped says that Close stopped the writer while it waited.
var errStopped = errors.New("natsink: stopped")

// run is the writer goroutine. Woken when events land in the empty backlog
// (an end of epoch's epoch and health events land together: one wake), it
// takes the events waiting (a burst), sends them in order without waiting
// between them, asking for one ack, the last event's, and goes back to
// sleep without waiting for that ack: it takes it when it next wakes
// (non-blocking) or, when the next events are already waiting or the
// subscription closed, waits for it then. So an end of epoch costs one
// wake of this goroutine, not a second one for the ack, and its events
// reach the server as soon as before. A burst not acknowledged in ackWait
// is sent again until it is stored or the sink stops; a burst is sent only
// after the one before it is acknowledged (an ack confirms the events sent
// before it on the same connection).
func (s *Sink) run() {
	defer close(s.done)
	defer s.clock.Stop()
	defer func() {
		if r := recover(); r != nil {
			s.fail(fmt.Errorf("natsink: panic: %v", r))
		}
	}()
	backoff := 50 * time.Millisecond
	retry := func(err error) bool {
		s.retries.Add(1)
		s.fail(err)
		select {
		case <-s.stop:
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
		return true
	}
	closed := false // the subscription's channel is closed and drained
	defer func() { s.unsent.Add(int64(len(s.held))) }()
	for {
		if s.flying > 0 {
			wait := closed || s.closing.Load() || len(s.held) > s.flying || len(s.sub.C()) > 0
			got, err := s.confirm(wait)
			switch {
			case errors.Is(err, errStopped):
				return
			case err != nil:
				if !retry(err) {
					return
				}
				continue
			case got:
				backoff = 50 * time.Millisecond
				continue
			}
			if !s.sleep() {
				return
			}
			continue
		}
		if len(s.held) == 0 {
			select {
			case e, ok := <-s.sub.C():
				if !ok {
					return // closed and every event acknowledged
				}
				s.hold(e)
			default:
				if closed {
					return
				}
				if !s.sleep() {
					return
				}
				continue
			}
		}
		// The events waiting join the burst only while the connection is up:
		// during an outage the writer holds one event and the backlog is the
		// subscription's buffer, as configured.
	more:
		for len(s.held) < MaxBurst && s.nc.IsConnected() {
			select {
			case e, ok := <-s.sub.C():
				if !ok {
					closed = true
					break more
				}
				s.hold(e)
			default:
				break more
			}
		}
		if err := s.send(); err != nil && !retry(err) {
			return
		}
	}
}

// hold takes e from the subscription into the writer's hands.
func (s *Sink) hold(e *oona.Event) {
	s.held = append(s.held, e)
	s.holding.Store(int64(len(s.held)))
}

// sleep waits until an event lands in the empty backlog, Close, or the
// clock's next tick; the clock stops at a tick that finds nothing held.
// It returns false when the sink stops.
func (s *Sink) sleep() bool {
	select {
	case <-s.kick:
	case <-s.clock.C:
		if len(s.held) == 0 {
			s.clock.Stop()
			s.clockOn = false
		}
	case <-s.stop:
		return false
	}
	s.wakes.Add(1)
	return true
}

// send sends the events held (a burst) and asks for the last one's ack
// (see publish's rules, below); they fly until confirm takes the ack.
func (s *Sink) send() error {
	n, cut, err := s.publish(s.held)
	if err != nil {
		return err
	}
	s.flying, s.cut, s.sentAt = n, cut, time.Now()
	s.bursts.Add(1)
	if !s.clockOn {
		s.clock.Reset(s.every)
		s.clockOn = true
	}
	return nil
}

// confirm takes the ack of the burst in flight: it reports got when the
// ack came (the burst is then stored, and the events it confirms leave
// the writer's hands) or when ackWait passed without it (an error: the
// burst is sent again whole). Without wait it returns at once when the
// ack has not come yet; with wait it waits for it until ackWait after the
// send (errStopped if the sink stops meanwhile).
func (s *Sink) confirm(wait bool) (got bool, err error) {
	deadline := s.sentAt.Add(ackWait)
	late := func() (bool, error) {
		last := s.held[s.flying-1]
		s.flying = 0
		return true, s.refused(last, fmt.Errorf("no ack in %v: %w", ackWait, jetstream.ErrAsyncPublishTimeout))
	}
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var msg *nats.Msg
		select {
		case msg = <-s.ackCh:
		default:
			left := time.Until(deadline)
			if left <= 0 {
				return late()
			}
			if !wait {
				return false, nil
			}
			if timer == nil {
				timer = time.NewTimer(left)
			}
			s.ackWaits.Add(1)
			select {
			case msg = <-s.ackCh:
			case <-timer.C:
				return late()
			case <-s.stop:
				return true, errStopped
			}
		}
		if msg.Subject != s.reply {
			continue // a late ack of an earlier burst
		}
		n := s.flying
		s.flying = 0
		if err := ackErr(msg); err != nil {
			return true, s.refused(s.held[n-1], err)
		}
		s.sent.Add(int64(n))
		s.held = append(s.held[:0], s.held[n:]...)
		s.holding.Store(int64(len(s.held)))
		if s.cut != nil {
			cut := s.cut
			s.cut = nil
			return true, s.refused(s.held[0], cut)
		}
		return true, nil
	}
}

// publish stores evs in the stream (creating the stream first when
// needed). It sends them all, in order, and asks for one ack, the last
// event's: the stream takes a connection's messages in the order sent, so
// the ack of the last confirms the burst (one ack per burst, not one per
// event). It returns how many, from the first, were sent with the ack
// asked for the last of them (all, or fewer after a refusal, below), cut:
// the refusal that stopped the burst before the rest, and an error when
// none was sent. A burst whose ack does not come (the connection dropped,
// the stream is missing) is sent again whole: each event keeps its id, so
// the server stores once an event that had reached it (Nats-Msg-Id). An
// event the client refuses (over the server's max_payload) stops the burst
// there: the events before it are confirmed by sending the one just before
// it again, with the reply subject (a duplicate, acknowledged and not
// stored).
func (s *Sink) publish(evs []*oona.Event) (n int, cut, err error) {
	if !s.nc.IsConnected() {
		if err := s.nc.LastError(); err != nil { // e.g. "nats: authorization violation"
			return 0, nil, fmt.Errorf("natsink: not connected to %s: %w", s.shown, err)
		}
		return 0, nil, fmt.Errorf("natsink: not connected to %s", s.shown)
	}
	if !s.streamOK() {
		ctx, cancel := context.WithTimeout(context.Background(), ackWait)
		_, err := s.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name: s.cfg.Stream, Subjects: []string{"esper.v1.>"}, Storage: jetstream.FileStorage,
			Duplicates: DefaultDuplicates, MaxAge: 30 * 24 * time.Hour, MaxBytes: 1 << 30,
		})
		cancel()
		if err != nil {
			return 0, nil, fmt.Errorf("natsink: stream %s: %w", s.cfg.Stream, err)
		}
		s.setStream(true)
	}
	s.burst++
	s.reply = s.inbox + "." + strconv.FormatUint(s.burst, 10)
	n = len(evs)
	for i, ev := range evs {
		r := ""
		if i == n-1 {
			r = s.reply
		}
		if err := s.nc.PublishMsg(message(ev, r)); err != nil {
			n, cut = i, err
			break
		}
	}
	if n == 0 {
		return 0, nil, s.refused(evs[0], cut)
	}
	if cut != nil {
		// Ask for the ack of the last event sent (again: stored once).
		if err := s.nc.PublishMsg(message(evs[n-1], s.reply)); err != nil {
			return 0, nil, s.refused(evs[n-1], err)
		}
	}
	return n, cut, nil
}

// message is ev as a NATS message: its subject, its line (without the
// newline) and its id as Nats-Msg-Id, with reply as the reply subject
// ("" for none: the server then sends no ack).
func message(ev *oona.Event, reply string) *nats.Msg {
	line := ev.Line()
	return &nats.Msg{Subject: ev.Subject(), Reply: reply, Data: line[:len(line)-1],
		Header: nats.Header{nats.MsgIdHdr: []string{ev.ID}}}
}

// pubAck is the part of JetStream's publish ack the sink reads.
type pubAck struct {
	Stream string `json:"stream"`
	Error  *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// streamNotFound is JetStream's error code for a missing stream.
const streamNotFound = 10059

// ackErr returns nil when msg is the stream's ack of a stored message,
// else what it says went wrong.
func ackErr(msg *nats.Msg) error {
	if len(msg.Data) == 0 && msg.Header.Get("Status") == "503" {
		return nats.ErrNoResponders
	}
	var ack pubAck
	if err := json.Unmarshal(msg.Data, &ack); err != nil {
		return fmt.Errorf("ack %q: %v: %w", msg.Data, err, jetstream.ErrInvalidJSAck)
	}
	if ack.Error != nil {
		if ack.Error.ErrCode == streamNotFound {
			return fmt.Errorf("%s: %w", ack.Error.Description, jetstream.ErrStreamNotFound)
		}
		return fmt.Errorf("stream refused: %s (code %d, err_code %d)", ack.Error.Description, ack.Error.Code,
			ack.Error.ErrCode)
	}
	if ack.Stream == "" {
		return fmt.Errorf("ack %q: %w", msg.Data, jetstream.ErrInvalidJSAck)
	}
	return nil
}

// refused wraps a failed publish of ev; a missing stream is created again
// before the next try.
func (s *Sink) refused(ev *oona.Event, err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrNoResponders) {
		s.setStream(false)
	}
	return fmt.Errorf("natsink: publish %s: %w", ev.ID, err)
}

// Stats returns the sink's counts.
func (s *Sink) Stats() Stats {
	sub := s.sub.Stats()
	st := Stats{URL: s.shown, Connected: s.nc.IsConnected(), Sent: s.sent.Load(), Bursts: s.bursts.Load(),
		Retries: s.retries.Load(), Unsent: s.unsent.Load(), Dropped: sub.Dropped,
		Pending: sub.Pending + int(s.holding.Load()), Reconnects: int64(s.nc.Stats().Reconnects)}
	if p := s.lastErr.Load(); p != nil {
		st.LastError = *p
	}
	return st
}

// TransportStats returns Stats (for oona.Node).
func (s *Sink) TransportStats() any { return s.Stats() }

// Close stops taking events and gives the backlog at most timeout to
// reach the server (and the last burst's ack to come); what is left is
// counted as Unsent. Then the connection closes. It may be called again.
func (s *Sink) Close(timeout time.Duration) {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		s.sub.Close()
		s.wake() // the writer sleeps until told: it finds the channel closed
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-s.done:
		case <-t.C:
			close(s.stop)
			<-s.done
		}
		for range s.sub.C() {
			s.unsent.Add(1)
		}
		s.nc.Close()
	})
}
