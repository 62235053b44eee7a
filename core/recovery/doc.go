// Package recovery is Esper's error recovery toolkit: it classifies errors
// (transient, permanent, corrupt), retries transient failures with capped
// exponential backoff and jitter, and keeps circuit breakers keyed by string
// (per artifact in Urza) on top of sony/gobreaker/v2. Their cool-down is
// wall-clock time, right for I/O; a seed's breaker counts failing steps of
// the training run instead and lives in core/session (BreakerConfig).
//
// Concurrency: Classify and Retry are safe to call from any goroutine; a
// Policy is a plain value, and the Rand it holds must itself be safe for the
// goroutines that share the Policy (see LockedRand). Breakers is safe for
// concurrent use; the functions passed to Do run without any lock held.
//
// Ownership: Breakers owns its gobreaker instances; callers only ever see
// keys and States.
package recovery
