// Package oona is Esper's event bus and run log (docs/events.md).
//
// A Bus belongs to one run and one rank. Components publish typed,
// versioned events to it (lifecycle transitions, decisions with their
// reasons, epoch and health summaries, alarms, seed failures, artifacts
// published, the run's start and end); the bus stamps each with a unique
// id, a sequence number, the run, the rank and the time, encodes it once
// as a JSON line, and hands it to every subscriber.
//
// Publishing never blocks: each subscriber has a bounded buffer, and an
// event that finds a subscriber's buffer full is dropped for that
// subscriber and counted (Stats). Subscribers read their channel in their
// own goroutine.
//
// RunLog is the subscriber that appends every event to the run's
// events.jsonl: whole lines, flushed to the operating system after each
// burst of events, fsynced at run boundaries and at epoch ends (at most
// once a second), rotated at a size
// bound. A process killed at any point leaves a log that is readable up to
// its last complete line.
//
// Concurrency: every method of *Bus, *Subscription and *RunLog is safe for
// concurrent use. Events handed to subscribers are shared and must not be
// modified.
package oona
