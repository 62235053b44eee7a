package value

import (
	"encoding/json"
	"fmt"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/urza"
)

// observation is the part of an outcome record's observation the value
// model reads (python/esper/outcomes.py writes it; docs/internals.md,
// "Outcome records").
type observation struct {
	Epoch      int    `json:"epoch"`
	Epochs     *int   `json:"epochs"`
	ParamsUsed *int64 `json:"params_used"`
	MaxParams  *int64 `json:"max_params"`
	HostParams *int64 `json:"host_params"`
}

// FromOutcome returns the candidate an outcome record describes, as it was
// when its germination was decided. The record's params_used counts the
// seed itself (it is read after the germination), so ParamsUsed is that
// minus the seed's parameters. Fields the record lacks count as unknown (0).
func FromOutcome(o *urza.Outcome) (Candidate, error) {
	var host blueprint.Host
	if err := json.Unmarshal(o.Host, &host); err != nil {
		return Candidate{}, fmt.Errorf("value: outcome %s/%d: host: %w", o.RunID, o.Seq, err)
	}
	var params blueprint.Params
	if len(o.TemplateParams) > 0 {
		var err error
		if params, err = blueprint.ParseParams(o.TemplateParams); err != nil {
			return Candidate{}, fmt.Errorf("value: outcome %s/%d: template_params: %w", o.RunID, o.Seq, err)
		}
	}
	var obs observation
	if err := json.Unmarshal(o.Observation, &obs); err != nil {
		return Candidate{}, fmt.Errorf("value: outcome %s/%d: observation: %w", o.RunID, o.Seq, err)
	}
	c := Candidate{
		Sample: karn.Sample{Template: o.Template, Params: params, Host: host, ParamCount: o.ParamCount,
			FLOPsPerSample: o.FLOPsPerSample, Signals: karn.ObservedSignals(o.Observation)},
		Epoch: o.GerminatedEpoch,
	}
	if obs.Epochs != nil {
		c.Epochs = max(0, *obs.Epochs)
	}
	if obs.ParamsUsed != nil {
		c.ParamsUsed = max(0, *obs.ParamsUsed-o.ParamCount)
	}
	if obs.MaxParams != nil {
		c.MaxParams = max(0, *obs.MaxParams)
	}
	if obs.HostParams != nil {
		c.HostParams = max(0, *obs.HostParams)
	}
	return c, nil
}
