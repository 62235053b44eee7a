package value

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/esper-morph/esper/core/nn"
	"github.com/esper-morph/esper/core/safetensors"
)

// WriteLinear writes a one-layer value model to dir (created if needed):
// the prediction is bias + the sum of coef[name] x feature name, with no
// normalisation. It makes hand-set models whose decisions are known (tests,
// baselines); training record is written as given. A coefficient for an
// unknown feature is an error.
func WriteLinear(dir string, coef map[string]float64, bias float64, training any) error {
	names := FeatureNames()
	w := make([]float32, len(names))
	for k, v := range coef {
		i := slices.Index(names, k)
		if i < 0 {
			return fmt.Errorf("value: write linear model: %q is not a feature: %w", k, ErrModel)
		}
		w[i] = float32(v)
	}
	weights, err := safetensors.EncodeF32([]safetensors.F32{
		{Name: "l0.weight", Shape: []uint64{1, uint64(len(names))}, Data: w},
		{Name: "l0.bias", Shape: []uint64{1}, Data: []float32{float32(bias)}},
	})
	if err != nil {
		return fmt.Errorf("value: write linear model: %w", err)
	}
	rec, err := json.Marshal(training)
	if err != nil {
		return fmt.Errorf("value: write linear model: training: %w", err)
	}
	m := Manifest{Kind: Kind, Schema: Schema, Features: names, Target: TargetName, Training: rec,
		Spec: nn.Spec{Layers: []nn.LayerSpec{{Weight: "l0.weight", Bias: "l0.bias", Activation: nn.Identity}}}}
	doc, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("value: write linear model: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("value: write linear model: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, WeightsFile), weights, 0o644); err != nil {
		return fmt.Errorf("value: write linear model: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), doc, 0o644); err != nil {
		return fmt.Errorf("value: write linear model: %w", err)
	}
	return nil
}
