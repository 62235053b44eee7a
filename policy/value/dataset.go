package value

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/urza"
)

// ErrOptions is returned for malformed dataset options. [INVALID]
var ErrOptions = errcode.New(errcode.Invalid, "invalid value dataset options")

// Options select the records a dataset is built from.
type Options struct {
	// Runs lists the run ids to read; empty reads every run.
	Runs []string `json:"runs,omitempty"`
	// Policies keeps only records whose policy is listed ("heuristic",
	// "random", "learned", ...); empty keeps all. Germinations a user made
	// by hand are recorded as "manual".
	Policies []string `json:"policies,omitempty"`
	// InFlight keeps records written at an end of epoch for a seed still in
	// flight (ended_by "in_flight"); they are left out by default: their
	// germination has not ended.
	InFlight bool `json:"in_flight,omitempty"`
}

// ParseOptions decodes options strictly ("" or "{}" is the default).
func ParseOptions(doc []byte) (Options, error) {
	var o Options
	if len(doc) == 0 {
		return o, nil
	}
	if err := canon.DecodeStrict(doc, &o); err != nil {
		return Options{}, fmt.Errorf("value: dataset options: %v: %w", err, ErrOptions)
	}
	return o, nil
}

// Row is one outcome record as a training example.
type Row struct {
	// Run and Seq name the record; Layer, Template and Policy describe it.
	Run      string `json:"run"`
	Seq      int    `json:"seq"`
	Layer    int    `json:"layer"`
	Template string `json:"template"`
	Policy   string `json:"policy"`
	// X are the features (Dataset.Features order), Target the target (Y)
	// and its parts.
	X []float64 `json:"x"`
	Target
	// FinalState and EndedBy say how the germination ended.
	FinalState string `json:"final_state"`
	EndedBy    string `json:"ended_by"`
	// Prediction is the value the learned policy predicted when it chose
	// this germination (nil for other policies).
	Prediction *float64 `json:"prediction"`
}

// Dataset is a training set: feature names, target name, rows, and what
// was left out.
type Dataset struct {
	Features []string `json:"features"`
	Target   string   `json:"target"`
	Rows     []Row    `json:"rows"`
	// Skipped counts the records left out, by reason: "in_flight",
	// "policy", "no_scale" (no host_params).
	Skipped map[string]int `json:"skipped"`
}

// Build reads the outcome records of the store that opts select and
// returns them as rows.
func Build(s *urza.Store, opts Options) (*Dataset, error) {
	runs := opts.Runs
	if len(runs) == 0 {
		runs = []string{""}
	}
	d := &Dataset{Features: FeatureNames(), Target: TargetName, Rows: []Row{},
		Skipped: map[string]int{"in_flight": 0, "policy": 0, "no_scale": 0}}
	for _, run := range runs {
		recs, err := s.Outcomes(run)
		if err != nil {
			return nil, fmt.Errorf("value: dataset: %w", err)
		}
		for _, raw := range recs {
			row, skip, err := d.row(raw, opts)
			if err != nil {
				return nil, err
			}
			if skip != "" {
				d.Skipped[skip]++
				continue
			}
			d.Rows = append(d.Rows, row)
		}
	}
	return d, nil
}

func (d *Dataset) row(raw json.RawMessage, opts Options) (Row, string, error) {
	var o urza.Outcome
	if err := json.Unmarshal(raw, &o); err != nil {
		return Row{}, "", fmt.Errorf("value: dataset: outcome record: %w", err)
	}
	if o.EndedBy == "in_flight" && !opts.InFlight {
		return Row{}, "in_flight", nil
	}
	if len(opts.Policies) > 0 && !slices.Contains(opts.Policies, o.Policy) {
		return Row{}, "policy", nil
	}
	t, err := TargetOf(&o)
	if errors.Is(err, ErrNoScale) {
		return Row{}, "no_scale", nil
	}
	if err != nil {
		return Row{}, "", err
	}
	c, err := FromOutcome(&o)
	if err != nil {
		return Row{}, "", err
	}
	x := make([]float64, len(d.Features))
	FillFeatures(d.Features, &c, x)
	return Row{Run: o.RunID, Seq: o.Seq, Layer: o.Layer, Template: o.Template, Policy: o.Policy, X: x, Target: t,
		FinalState: o.FinalState, EndedBy: o.EndedBy, Prediction: o.Prediction}, "", nil
}
