package tamiyo

import (
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/nissa"
)

// searchCount is how many candidates Tamiyo asks Karn for.
const searchCount = 5

// SetKarn gives the controller the Karn service its requests go to (the
// session's, reading the outcome history from Urza). Without one, a
// controller with Config.Search asks a service with no history.
func (c *Controller) SetKarn(k *karn.Service) {
	if c.cfg.Search && k != nil {
		c.karn = k
	}
}

// Karn returns the controller's Karn service (nil unless Config.Search).
func (c *Controller) Karn() *karn.Service { return c.karn }

// search asks Karn for a blueprint for layer costing no more than fixed
// (the fixed template's seed there) and returns the best candidate the
// governor admits that is no smaller than the least seed allowed, with the
// reason's note and its predicted gain (nil when Karn ranked by the prior:
// no predictor made one); or nil and a note saying why the fixed template
// grows.
func (c *Controller) search(obs *Observation, layer int, fixed *blueprint.IR, used int64, active int) (*blueprint.IR, string, *float64) {
	req := karn.Request{
		ID:     fmt.Sprintf("epoch%d-layer%d", obs.Epoch, layer),
		Host:   c.hosts[layer],
		Budget: blueprint.Budget{MaxParams: fixed.ParamCount, MaxFLOPs: fixed.FLOPsPerSample},
		// Candidates under the least seed size would be refused below:
		// Karn leaves them out, so its best few are ones Tamiyo can take.
		MinParams: min(c.least[layer], fixed.ParamCount),
		Signals:   layerSignals(obs, layer),
		Count:     searchCount,
		Seed:      c.cfg.Seed ^ uint64(obs.Epoch)<<16 ^ uint64(layer),
		// The evaluation cap, not the clock, ends a search (the time
		// budget is a safety bound): a run's decisions are reproducible.
		TimeBudgetMS: int(karn.MaxTimeBudget.Milliseconds()),
	}
	for _, ct := range c.templates[layer] {
		req.Prefer = append(req.Prefer, ct.t.Name)
	}
	ans, err := c.karn.Answer(req)
	if err != nil {
		return nil, fmt.Sprintf("; karn request %s failed (%v), so the fixed template", req.ID, err), nil
	}
	head := fmt.Sprintf("; karn request %s (budget %d params, %d FLOPs per sample: the fixed %s seed's; %d past trials on %s hosts; %d blueprints tried in %.1f ms)",
		req.ID, req.Budget.MaxParams, req.Budget.MaxFLOPs, fixed.Template, len(c.karn.History(req)), req.Host.Layout(), ans.Evaluated,
		float64(ans.ElapsedUS)/1000)
	if len(ans.Candidates) == 0 {
		return nil, head + ": no candidate (" + ans.Note + "), so the fixed template", nil
	}
	ranked := fmt.Sprintf("ranked by predicted gain (%s)", ans.Predictor)
	if ans.RankedBy == karn.RankedByPrior {
		ranked = fmt.Sprintf("ranked by the prior (%s), no gain predicted: %s", karn.Prior, ans.Predictor)
	}
	list := describeCandidates(ans.Candidates)
	for i := range ans.Candidates {
		cd := &ans.Candidates[i]
		if cd.ParamCount < c.least[layer] {
			continue
		}
		if err := c.gov.Admit(used, cd.ParamCount, active); err != nil {
			continue
		}
		var gain *float64
		if ans.RankedBy == karn.RankedByPredictor && cd.PredictedGain != nil {
			g := *cd.PredictedGain
			gain = &g
		}
		return cd.Blueprint(), fmt.Sprintf("%s: %d candidates %s: %s; took candidate %d (%s)",
			head, len(ans.Candidates), ranked, list, cd.Rank, cd.Origin), gain
	}
	return nil, fmt.Sprintf("%s: %d candidates (%s), none admitted by the governor nor at least %d params, so the fixed template",
		head, len(ans.Candidates), list, c.least[layer]), nil
}

// describeCandidates lists candidates as "1. lowrank {rank=8} 1040 params
// gain 1.20%".
func describeCandidates(cands []karn.Candidate) string {
	parts := make([]string, len(cands))
	for i := range cands {
		cd := &cands[i]
		gain := "gain n/a"
		switch {
		case cd.PredictedGain != nil:
			gain = fmt.Sprintf("predicted gain %.2f%%", 100**cd.PredictedGain)
		case cd.PriorGain != nil:
			gain = fmt.Sprintf("measured gain of its template %.2f%%", 100**cd.PriorGain)
		}
		parts[i] = fmt.Sprintf("%d. %s %s %d params %s", cd.Rank, cd.Template, describeParams(cd.Params), cd.ParamCount, gain)
	}
	return strings.Join(parts, ", ")
}

// layerSignals returns the layer's signal means and the epoch's losses,
// where measured and finite.
func layerSignals(obs *Observation, layer int) karn.Signals {
	out := karn.Signals{}
	if layer < len(obs.Layers) {
		sig := &obs.Layers[layer].Signals
		for s := nissa.Signal(0); s < nissa.NumSignals; s++ {
			if m := sig[s].Mean; sig[s].N > 0 && !math.IsNaN(m) && !math.IsInf(m, 0) && slices.Contains(karn.SignalNames, s.String()) {
				out[s.String()] = m
			}
		}
	}
	if v := obs.Metrics.ValLoss; v.Finite() {
		out["val_loss"] = v.Value
	}
	if v := obs.Metrics.TrainLoss; v.Finite() {
		out["train_loss"] = v.Value
	}
	return out
}
