package value

import (
	"math"
	"slices"

	"github.com/esper-morph/esper/blueprint/karn"
)

// Candidate is what the value model reads of one germination, as it was
// (an outcome record) or would be (a live decision).
type Candidate struct {
	// Sample is Karn's view of the seed: template, parameters, host, its
	// parameter count and FLOPs per sample, the layer's signal means and the
	// epoch's losses (karn.Signals).
	karn.Sample
	// Epoch is the epoch at whose end the germination is decided; Epochs the
	// run's planned length (0: unknown).
	Epoch, Epochs int
	// ParamsUsed counts the parameters of live and fossilized seeds before
	// this germination; MaxParams is the parameter budget (0: none);
	// HostParams sums the wrapped layers' own parameters (0: unknown).
	ParamsUsed, MaxParams, HostParams int64
}

// extraNames are the features added to Karn's (FeatureNames documents
// them).
var extraNames = []string{"epoch_frac", "epochs_known", "log_epoch", "budget_used", "budget_known",
	"size_frac", "grown_frac", "gen_gap"}

// FeatureNames returns the value model's input names, in order: Karn's
// blueprint features (karn.FeatureNames: counts, host shape, template,
// activation and layout indicators, the layer's signals and the epoch's
// losses), then:
//
//	epoch_frac     Epoch / Epochs, clamped to [0, 1]; 0 when Epochs is unknown
//	epochs_known   1 when Epochs > 0
//	log_epoch      log(1 + Epoch)
//	budget_used    ParamsUsed / MaxParams, clamped to [0, 1]; 0 without a budget
//	budget_known   1 when MaxParams > 0
//	size_frac      log(1 + ParamCount / HostParams); 0 when HostParams is unknown
//	grown_frac     log(1 + ParamsUsed / HostParams); 0 when HostParams is unknown
//	gen_gap        (val_loss - train_loss) / val_loss, clamped to [-1, 1]; 0 unless both are measured and val_loss > 0
//
// A model's manifest lists the names it reads, in its own order; Load
// refuses a name this list lacks.
func FeatureNames() []string {
	return append(karn.FeatureNames(), extraNames...)
}

// Features returns the candidate's feature vector, in FeatureNames order.
func Features(c *Candidate) []float64 {
	names := FeatureNames()
	x := make([]float64, len(names))
	FillFeatures(names, c, x)
	return x
}

// FillFeatures writes the candidate's features named by names (FeatureNames
// or a subset in any order, such as a model's list) into x (len(names)).
func FillFeatures(names []string, c *Candidate, x []float64) {
	karn.FillFeatures(names, &c.Sample, x)
	clamp := func(v, lo, hi float64) float64 { return math.Min(hi, math.Max(lo, v)) }
	for _, n := range extraNames {
		i := slices.Index(names, n)
		if i < 0 {
			continue
		}
		var v float64
		switch n {
		case "epoch_frac":
			if c.Epochs > 0 {
				v = clamp(float64(c.Epoch)/float64(c.Epochs), 0, 1)
			}
		case "epochs_known":
			v = b2f(c.Epochs > 0)
		case "log_epoch":
			v = math.Log1p(float64(max(0, c.Epoch)))
		case "budget_used":
			if c.MaxParams > 0 {
				v = clamp(float64(c.ParamsUsed)/float64(c.MaxParams), 0, 1)
			}
		case "budget_known":
			v = b2f(c.MaxParams > 0)
		case "size_frac":
			if c.HostParams > 0 {
				v = math.Log1p(float64(max(0, c.ParamCount)) / float64(c.HostParams))
			}
		case "grown_frac":
			if c.HostParams > 0 {
				v = math.Log1p(float64(max(0, c.ParamsUsed)) / float64(c.HostParams))
			}
		case "gen_gap":
			val, vok := c.Signals["val_loss"]
			train, tok := c.Signals["train_loss"]
			if vok && tok && val > 0 {
				v = clamp((val-train)/val, -1, 1)
			}
		}
		x[i] = v
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
