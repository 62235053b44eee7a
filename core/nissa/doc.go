// Package nissa ingests the health signals a training run reports and keeps
// rolling statistics over them: per layer and per signal, over a window of
// recent measurements, the mean, variance, least-squares slope per step and
// an exponentially weighted moving average (gonum/stat does the windowed
// statistics). It also encodes a JSON snapshot of the statistics for users
// and writes JSON-lines logs of signals, events and decisions.
//
// The signals buffer layout is fixed by docs/internals.md: two globals
// (train_loss_mean, nonfinite_count) then seven floats per layer (act_mean,
// act_var, dead_frac, grad_norm, weight_norm, eff_rank, seed_gain). A NaN means "not
// measured" and is skipped; an infinite value is counted as non-finite and
// kept out of the statistics so one overflow cannot poison a window.
//
// Concurrency: *Stats is a single-threaded core (like golang-lru's
// simplelru): it is not safe for concurrent use, and its owner
// (core/session) guards it with its own mutex. Ingest never allocates.
// *Logger is safe for concurrent use: each record is written with one Write
// call under the logger's mutex. Metric and Num are plain values.
package nissa
