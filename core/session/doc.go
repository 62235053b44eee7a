// Package session is one morphogenetic training run, driven by the trainer
// once per optimizer step and once per epoch: the seed slots of every
// wrapped (Kasmina) layer with their lifecycle (core/lifecycle), the health
// signal statistics (core/nissa), the controller and its safety governor
// (policy/tamiyo), per-seed circuit breakers (consecutive failing steps) and a growth
// log of every event and decision.
//
// The per-step call, Step, advances the step counters, applies the gated
// automatic transitions, ingests the signals buffer, lets the governor
// check the loss and writes every slot's alpha; it does not allocate in the
// steady state. Lifecycle events queue until Events drains them (calls that
// return events drain the queue too, so each event is seen exactly once, in
// order). EndEpoch asks Tamiyo for decisions and applies them. Snapshot and
// Restore capture and replace the whole state, so a run checkpointed in the
// middle of BLENDING resumes identically.
//
// Concurrency: every method of *Session is safe for concurrent use; one
// mutex guards the state. When a log writer is configured, records are
// written after that mutex is released (in order, under a second mutex), so
// a slow writer never runs under the state lock. Config, Event and the other
// result types are plain values the caller owns.
package session
