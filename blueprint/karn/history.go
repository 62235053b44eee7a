package karn

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/urza"
)

// TrialFromOutcome turns one of Urza's outcome records into a Trial. ok is
// false, with no error, for a record that measured nothing (no HOLDING
// measurement with finite losses and a positive validation loss without
// the seed): it says nothing of how the seed paid. The gain is the last
// measurement's delta_loss over the validation loss without the seed
// (val_loss + delta_loss): the share of the loss the seed removed, at most
// 1 (over the loss with the seed it would explode as that nears 0); the
// signals are the layer's rolling means and the epoch's
// losses in the record's observation. A record that does not decode is an
// error naming the run.
func TrialFromOutcome(raw json.RawMessage) (t Trial, ok bool, err error) {
	var o urza.Outcome
	if err := json.Unmarshal(raw, &o); err != nil {
		return Trial{}, false, fmt.Errorf("karn: outcome record: %w", err)
	}
	gain, measured := MeasuredGain(&o)
	if !measured {
		return Trial{}, false, nil
	}
	var host blueprint.Host
	if err := json.Unmarshal(o.Host, &host); err != nil {
		return Trial{}, false, fmt.Errorf("karn: outcome record %s/%d: host: %w", o.RunID, o.Seq, err)
	}
	var params blueprint.Params
	if len(o.TemplateParams) > 0 {
		if params, err = blueprint.ParseParams(o.TemplateParams); err != nil {
			return Trial{}, false, fmt.Errorf("karn: outcome record %s/%d: template_params: %w", o.RunID, o.Seq, err)
		}
	}
	return Trial{Run: o.RunID, Template: o.Template, Params: params, Host: host, ParamCount: o.ParamCount,
		FLOPsPerSample: o.FLOPsPerSample, Gain: gain, Fossilized: o.FinalState == "FOSSILIZED",
		Signals: observedSignals(o.Observation)}, true, nil
}

// MeasuredGain returns the gain of an outcome record's last HOLDING
// measurement with finite losses and a positive validation loss without
// the seed: its delta_loss over that loss (val_loss + delta_loss), the share
// of the loss the seed removed, at most 1. ok is false when no measurement
// qualifies.
func MeasuredGain(o *urza.Outcome) (gain float64, ok bool) {
	for _, c := range o.Contributions {
		if c.ValLoss == nil {
			continue
		}
		if g, measured := RelativeGain(*c.ValLoss, c.DeltaLoss); measured {
			gain, ok = g, true
		}
	}
	return gain, ok
}

// RelativeGain returns the gain of one measurement: deltaLoss (validation
// loss without the seed minus with it) over the validation loss without
// the seed (valLoss, the loss with it, plus deltaLoss): the share of the
// loss the seed removed, at most 1. ok is false when either number is not
// finite or the loss without the seed is not positive. It is the unit of
// Trial.Gain, of a predicted gain and of the impact analysis.
func RelativeGain(valLoss, deltaLoss float64) (gain float64, ok bool) {
	if math.IsInf(valLoss, 0) || math.IsNaN(valLoss) || math.IsInf(deltaLoss, 0) || math.IsNaN(deltaLoss) {
		return 0, false
	}
	without := valLoss + deltaLoss
	if !(without > 0) || math.IsInf(without, 0) {
		return 0, false
	}
	gain = deltaLoss / without
	if math.IsInf(gain, 0) || math.IsNaN(gain) {
		return 0, false
	}
	return gain, true
}

// ObservedSignals is observedSignals, for other packages that read the
// same records (policy/value).
func ObservedSignals(raw json.RawMessage) Signals { return observedSignals(raw) }

// observedSignals reads the signals of SignalNames from an outcome
// record's observation: layer_signals.<name>.mean and metrics.val_loss /
// metrics.train_loss, where they are finite numbers.
func observedSignals(raw json.RawMessage) Signals {
	var obs struct {
		Metrics      map[string]any            `json:"metrics"`
		LayerSignals map[string]map[string]any `json:"layer_signals"`
	}
	out := Signals{}
	if json.Unmarshal(raw, &obs) != nil {
		return out
	}
	put := func(name string, v any) {
		if f, isNum := v.(float64); isNum && !math.IsNaN(f) && !math.IsInf(f, 0) {
			out[name] = f
		}
	}
	for name, summary := range obs.LayerSignals {
		put(name, summary["mean"])
	}
	put("val_loss", obs.Metrics["val_loss"])
	put("train_loss", obs.Metrics["train_loss"])
	for k := range out {
		if !isSignal(k) {
			delete(out, k)
		}
	}
	return out
}

func isSignal(name string) bool {
	for _, s := range SignalNames {
		if s == name {
			return true
		}
	}
	return false
}

// TrialsFromOutcomes converts records with TrialFromOutcome, keeping those
// that measured something; skipped counts the others.
func TrialsFromOutcomes(records []json.RawMessage) (trials []Trial, skipped int, err error) {
	for _, r := range records {
		t, ok, err := TrialFromOutcome(r)
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			skipped++
			continue
		}
		trials = append(trials, t)
	}
	return trials, skipped, nil
}
