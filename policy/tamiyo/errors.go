package tamiyo

import "github.com/esper-morph/esper/core/errcode"

// Sentinel errors, each with a stable code from core/errcode.
var (
	// ErrConfig is returned when a Config is out of range or names an
	// unknown policy or template.
	ErrConfig = errcode.New(errcode.Invalid, "tamiyo: bad config")

	// ErrMetrics is returned when an end-of-epoch metrics document is
	// malformed.
	ErrMetrics = errcode.New(errcode.Invalid, "tamiyo: bad metrics")

	// ErrOverBudget is returned when a germination would take the
	// parameters of live and fossilized seeds over the budget.
	ErrOverBudget = errcode.New(errcode.Budget, "tamiyo: over parameter budget")

	// ErrConcurrency is returned when a germination would exceed the limit
	// of seeds in flight.
	ErrConcurrency = errcode.New(errcode.Budget, "tamiyo: too many seeds in flight")

	// ErrCooldown is returned when a layer is still cooling down after its
	// last germination.
	ErrCooldown = errcode.New(errcode.State, "tamiyo: layer in cooldown")

	// ErrState is returned when a saved State cannot be restored.
	ErrState = errcode.New(errcode.Invalid, "tamiyo: bad saved state")
)
