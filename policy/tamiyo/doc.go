// Package tamiyo is the controller of a morphogenetic training run: the
// heuristic policy that decides when and where seeds germinate and whether a
// judged seed is fossilized or pruned, the random-placement baseline, the
// manual (no-op) policy, and the safety governor that enforces the parameter
// budget, the concurrency limit and per-layer cooldowns and calls for a
// rollback when a signal or the training loss goes non-finite, the training
// loss explodes, or the validation loss is non-finite.
//
// Tamiyo only decides: it reads an Observation (metrics, per-layer rolling
// signals from Nissa, the seeds' records, contributions measured in
// HOLDING, the parameters in use) and returns Decisions, each with a
// human-readable reason. Applying them is the session's job (core/session).
// Blueprints come from Karn's template library (package blueprint).
//
// Everything is deterministic: the random policy draws from a PCG generator
// seeded by the configuration, and its state is part of State, so a
// restored controller continues identically.
//
// Concurrency: a *Controller and its *Governor are not safe for concurrent
// use; the session calls them under its own mutex. Config, Metrics,
// Decision and State are plain values. Governor.ObserveStep does not
// allocate (it runs on the session's per-step path).
package tamiyo
