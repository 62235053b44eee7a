package karn

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
)

// ErrRequest is returned for a malformed request. [INVALID]
var ErrRequest = errcode.New(errcode.Invalid, "karn: invalid request")

// Limits and defaults of a Request.
const (
	// MaxRequestBytes bounds a request document.
	MaxRequestBytes = 1 << 20
	// MaxHistory bounds the trials a request carries.
	MaxHistory = 4096
	// MaxCount bounds the candidates a request asks for.
	MaxCount = 64
	// DefaultCount is how many candidates an answer holds at most.
	DefaultCount = 5
	// DefaultTimeBudget is a search's time budget when the request gives
	// none; MaxTimeBudget bounds it.
	DefaultTimeBudget = 20 * time.Millisecond
	MaxTimeBudget     = 100 * time.Millisecond
	// DefaultEvaluations is how many blueprints a search evaluates at most
	// when the request gives no cap; MaxEvaluations bounds the cap.
	DefaultEvaluations = 256
	MaxEvaluations     = 1 << 14
)

// SignalNames are the signals a request may carry: the layer's rolling
// means of Nissa's signals (docs/internals.md, "Signals") and the epoch's
// validation and training loss.
var SignalNames = []string{"act_mean", "act_var", "dead_frac", "grad_norm", "weight_norm", "eff_rank", "seed_gain",
	"val_loss", "train_loss"}

// Signals maps names of SignalNames to finite values; an absent name is
// not measured.
type Signals map[string]float64

// Get returns the signal's value, or def when it is absent.
func (s Signals) Get(name string, def float64) float64 {
	if v, ok := s[name]; ok {
		return v
	}
	return def
}

// Trial is one past germination: what was grown, on which host, and how it
// paid.
type Trial struct {
	// Run is the training run it belongs to (the predictor's error is
	// measured on runs it was not fitted on).
	Run string `json:"run"`
	// Template and Params name the blueprint ("" for a hand-written IR,
	// which seeds no search).
	Template string           `json:"template"`
	Params   blueprint.Params `json:"params,omitempty"`
	// Host is the layer it grew on.
	Host blueprint.Host `json:"host"`
	// ParamCount and FLOPsPerSample are Karn's counts of the blueprint.
	ParamCount     int64 `json:"param_count"`
	FLOPsPerSample int64 `json:"flops_per_sample"`
	// Gain is the measured relative contribution: the validation loss
	// without the seed minus with it, over the loss without it (0.02: the
	// seed removed 2% of the loss).
	Gain float64 `json:"gain"`
	// Fossilized says the seed was kept (a published kernel).
	Fossilized bool `json:"fossilized,omitempty"`
	// Signals are the layer's signals when it was decided.
	Signals Signals `json:"signals,omitempty"`
}

// Request asks Karn for blueprints for one layer.
type Request struct {
	// ID names the request in reasons and logs (optional).
	ID string `json:"id,omitempty"`
	// Host is the layer to grow.
	Host blueprint.Host `json:"host"`
	// Budget bounds every candidate's parameters and FLOPs per sample (a
	// zero field: no limit).
	Budget blueprint.Budget `json:"budget"`
	// MinParams is the fewest parameters a candidate may have (0: no
	// floor): smaller blueprints are neither returned nor bred from, so a
	// caller with a least seed size gets candidates it can use.
	MinParams int64 `json:"min_params,omitempty"`
	// Signals are the layer's signals now.
	Signals Signals `json:"signals,omitempty"`
	// History is what was tried before and how it paid; the search is
	// seeded from the trials on hosts of the same layout.
	History []Trial `json:"history,omitempty"`
	// Prefer lists template names in the caller's order of preference:
	// the prior ranks by it (see Prior). Optional.
	Prefer []string `json:"prefer,omitempty"`
	// Count is how many candidates to return at most (default 5, at most
	// 64).
	Count int `json:"count,omitempty"`
	// TimeBudgetMS is the search's time budget in milliseconds (default
	// 20, at most 100).
	TimeBudgetMS int `json:"time_budget_ms,omitempty"`
	// Evaluations caps the blueprints the search evaluates (default 256):
	// a search that reaches the cap before its time budget is
	// reproducible.
	Evaluations int `json:"evaluations,omitempty"`
	// Seed drives every random choice of the search.
	Seed uint64 `json:"seed,omitempty"`
}

// wire is a Request as it is decoded: parameters as raw JSON, normalised by
// blueprint.ParseParams.
type wire struct {
	Request
	History []wireTrial `json:"history,omitempty"`
}

type wireTrial struct {
	Trial
	Params json.RawMessage `json:"params,omitempty"`
}

// ParseRequest decodes a request document strictly (unknown fields,
// duplicate keys, wrong types, trailing data and documents over
// MaxRequestBytes are refused) and validates it (see Request.Validate).
// Errors wrap ErrRequest and name the field.
func ParseRequest(data []byte) (Request, error) {
	if len(data) > MaxRequestBytes {
		return Request{}, fmt.Errorf("%w: %d bytes, limit %d", ErrRequest, len(data), MaxRequestBytes)
	}
	var w wire
	if err := canon.DecodeStrict(data, &w); err != nil {
		return Request{}, fmt.Errorf("%w: %v", ErrRequest, err)
	}
	r := w.Request
	r.History = make([]Trial, len(w.History))
	for i, t := range w.History {
		p, err := blueprint.ParseParams(t.Params)
		if err != nil {
			return Request{}, fmt.Errorf("%w: history[%d].params: %v", ErrRequest, i, err)
		}
		t.Trial.Params = p
		r.History[i] = t.Trial
	}
	if err := r.Validate(); err != nil {
		return Request{}, err
	}
	return r, nil
}

// Validate checks a request: a valid host, budget limits >= 0, signals of
// SignalNames with finite values, at most MaxHistory trials each with a
// valid host and a finite gain, and count, time budget and evaluations in
// range. Errors wrap ErrRequest.
func (r *Request) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrRequest, fmt.Sprintf(format, args...))
	}
	if err := r.Host.Validate(); err != nil {
		return bad("host: %v", err)
	}
	if r.Budget.MaxParams < 0 || r.Budget.MaxFLOPs < 0 {
		return bad("budget limits must be >= 0 (max_params %d, max_flops %d)", r.Budget.MaxParams, r.Budget.MaxFLOPs)
	}
	if r.MinParams < 0 || (r.Budget.MaxParams > 0 && r.MinParams > r.Budget.MaxParams) {
		return bad("min_params %d must be in [0, max_params %d]", r.MinParams, r.Budget.MaxParams)
	}
	if err := checkSignals("signals", r.Signals); err != nil {
		return err
	}
	if len(r.History) > MaxHistory {
		return bad("%d trials in history, limit %d", len(r.History), MaxHistory)
	}
	for i := range r.History {
		t := &r.History[i]
		if err := t.Host.Validate(); err != nil {
			return bad("history[%d].host: %v", i, err)
		}
		if math.IsNaN(t.Gain) || math.IsInf(t.Gain, 0) {
			return bad("history[%d].gain is not finite", i)
		}
		if t.ParamCount < 0 || t.FLOPsPerSample < 0 {
			return bad("history[%d]: param_count %d and flops_per_sample %d must be >= 0", i, t.ParamCount, t.FLOPsPerSample)
		}
		if err := checkSignals(fmt.Sprintf("history[%d].signals", i), t.Signals); err != nil {
			return err
		}
	}
	if len(r.Prefer) > 256 {
		return bad("prefer lists %d templates, limit 256", len(r.Prefer))
	}
	switch {
	case r.Count < 0 || r.Count > MaxCount:
		return bad("count %d is not in [0, %d] (0: %d)", r.Count, MaxCount, DefaultCount)
	case r.TimeBudgetMS < 0 || time.Duration(r.TimeBudgetMS)*time.Millisecond > MaxTimeBudget:
		return bad("time_budget_ms %d is not in [0, %d] (0: %d)", r.TimeBudgetMS, MaxTimeBudget.Milliseconds(), DefaultTimeBudget.Milliseconds())
	case r.Evaluations < 0 || r.Evaluations > MaxEvaluations:
		return bad("evaluations %d is not in [0, %d] (0: %d)", r.Evaluations, MaxEvaluations, DefaultEvaluations)
	}
	return nil
}

func checkSignals(where string, s Signals) error {
	for k, v := range s {
		if !slices.Contains(SignalNames, k) {
			return fmt.Errorf("%w: %s: unknown signal %q (known: %s)", ErrRequest, where, k, strings.Join(SignalNames, ", "))
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: %s.%s is not finite", ErrRequest, where, k)
		}
	}
	return nil
}

func (r *Request) count() int {
	if r.Count == 0 {
		return DefaultCount
	}
	return r.Count
}

func (r *Request) timeBudget() time.Duration {
	if r.TimeBudgetMS == 0 {
		return DefaultTimeBudget
	}
	return time.Duration(r.TimeBudgetMS) * time.Millisecond
}

func (r *Request) evaluations() int {
	if r.Evaluations == 0 {
		return DefaultEvaluations
	}
	return r.Evaluations
}

// errNoTemplate reports that no template supports a host.
var errNoTemplate = errors.New("no template of the library supports this host")
