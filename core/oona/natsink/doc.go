// Package natsink carries a run's Oona events to NATS (docs/events.md,
// "NATS"): each event is published to esper.v1.<run>.<rank>.<kind> and
// stored in the JetStream stream ESPER_EVENTS, deduplicated by its id
// (header Nats-Msg-Id), so another process or machine can follow the run
// live or replay it from the start.
//
// A Sink is a subscriber of the bus: its bounded subscription buffer is
// the backlog. Its goroutine, woken when events land in the empty backlog
// (once for the events of one Bus.PublishAll), publishes the events
// waiting as a burst to JetStream, asking for one ack, the burst's last
// event's (a stream stores one connection's messages in order), and
// takes that ack when it next wakes rather than waking for it; a burst
// not acknowledged in time is sent again whole (ids deduplicate), and the
// next burst waits for the ack of the one before. While the server is absent or
// down it retries the same event with backoff, and events published meanwhile
// wait in the buffer, or, once it is full, are dropped and counted by the
// bus (Stats). Training never waits on NATS: Publish on the bus never
// blocks, and Close gives the backlog a bounded time.
//
// Connections take the standard NATS credentials (a creds file,
// user/password, a token) and TLS (a CA, a client certificate); a
// plaintext connection to a host other than loopback is refused unless
// Config.AllowPlaintext is set.
//
// A Follower is the other end: it receives one run's events (or a
// subject's) from the server, from the stream's start with an ordered
// consumer, or live from the core subjects when the server has no stream,
// and hands them out as the raw JSON lines the run log holds (Poll); it
// decodes nothing. `esper monitor --nats` reads runs through it.
//
// Concurrency: Stats and Close are safe for concurrent use; so are a
// Follower's Poll, Stats and Close.
package natsink
