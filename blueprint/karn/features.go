package karn

import (
	"math"
	"sort"

	"github.com/esper-morph/esper/blueprint"
)

// Features are the predictor's inputs for a blueprint on a host under
// signals (docs/karn.md lists them):
//
//	log_params, log_flops      log(1 + n) of Karn's counts
//	log_params_per_out         log(1 + params) - log(out features of the host)
//	log_in, log_out            log of the host's in and out features (dim for residual hosts)
//	tpl:<name>                 1 for the blueprint's template (one per library template)
//	act:<name>                 1 for its "activation" parameter (one per choice in the library)
//	layout:<name>              1 for the host's layout
//	grad_norm, act_var, val_loss, train_loss   log(1 + max(0, v)) of the signal
//	dead_frac, seed_gain       the signal, clamped to [0, 1] and [-1, 1]
//	eff_rank_frac              eff_rank over the host's out features, clamped to [0, 1]
//
// A signal that is absent counts 0. The names come from the template table,
// so a template or activation added to the library becomes a feature with
// no change here.
func FeatureNames() []string {
	names := []string{"log_params", "log_flops", "log_params_per_out", "log_in", "log_out"}
	acts := map[string]bool{}
	layouts := map[string]bool{}
	for _, t := range blueprint.Templates() {
		names = append(names, "tpl:"+t.Name)
		for _, p := range t.Params {
			if p.Name == "activation" {
				for _, c := range p.Choices {
					acts[c] = true
				}
			}
		}
		for _, l := range t.Layouts {
			layouts[l] = true
		}
	}
	names = append(names, prefixed("act:", acts)...)
	names = append(names, prefixed("layout:", layouts)...)
	return append(names, "grad_norm", "act_var", "val_loss", "train_loss", "dead_frac", "seed_gain", "eff_rank_frac")
}

func prefixed(p string, set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, p+k)
	}
	sort.Strings(out)
	return out
}

// Sample is what the predictor sees of one blueprint: its template and
// parameters, its counts, the host and the layer's signals.
type Sample struct {
	Template       string
	Params         blueprint.Params
	Host           blueprint.Host
	ParamCount     int64
	FLOPsPerSample int64
	Signals        Signals
}

// TrialSample is the Sample of a past trial.
func TrialSample(t *Trial) Sample {
	return Sample{Template: t.Template, Params: t.Params, Host: t.Host, ParamCount: t.ParamCount,
		FLOPsPerSample: t.FLOPsPerSample, Signals: t.Signals}
}

// hostFeatures returns the host's in and out features (dim for a residual
// host), at least 1.
func hostFeatures(h blueprint.Host) (in, out float64) {
	if h.Kind == blueprint.HostResidual {
		return float64(max(1, h.Dim)), float64(max(1, h.Dim))
	}
	return float64(max(1, h.In)), float64(max(1, h.Out))
}

// FillFeatures writes the sample's features, named by names (a subset of
// FeatureNames, in any order), into x (len(names)).
func FillFeatures(names []string, s *Sample, x []float64) { featureVector(names, s, x) }

// featureVector fills x (len(names)) with the sample's features.
func featureVector(names []string, s *Sample, x []float64) {
	in, out := hostFeatures(s.Host)
	act, _ := s.Params["activation"].(string)
	layout := s.Host.Layout()
	lp := math.Log1p(float64(max(0, s.ParamCount)))
	pos := func(name string) float64 { return math.Log1p(math.Max(0, s.Signals.Get(name, 0))) }
	clamp := func(v, lo, hi float64) float64 { return math.Min(hi, math.Max(lo, v)) }
	tpl, actName, layoutName := "tpl:"+s.Template, "", "layout:"+layout
	if act != "" {
		actName = "act:" + act
	}
	for i, n := range names {
		var v float64
		switch n {
		case "log_params":
			v = lp
		case "log_flops":
			v = math.Log1p(float64(max(0, s.FLOPsPerSample)))
		case "log_params_per_out":
			v = lp - math.Log(out)
		case "log_in":
			v = math.Log(in)
		case "log_out":
			v = math.Log(out)
		case "grad_norm", "act_var", "val_loss", "train_loss":
			v = pos(n)
		case "dead_frac":
			v = clamp(s.Signals.Get(n, 0), 0, 1)
		case "seed_gain":
			v = clamp(s.Signals.Get(n, 0), -1, 1)
		case "eff_rank_frac":
			v = clamp(s.Signals.Get("eff_rank", 0)/out, 0, 1)
		default:
			switch {
			case n == tpl, actName != "" && n == actName, n == layoutName:
				v = 1
			}
		}
		x[i] = v
	}
}
