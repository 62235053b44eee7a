package value

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/urza"
)

// Publish checks that dir holds a usable value model (Load) and publishes
// its manifest.json and model.safetensors to store as a version of name
// (urza.Store.PutModel: content-addressed, verified on every read). A
// learned policy whose value_model is "urza:<name>" takes the newest
// version up at its next end of epoch (docs/simic.md, "Rolling
// deployment").
func Publish(store *urza.Store, name, dir string) (urza.ModelVersion, error) {
	if err := urza.CheckModelName(name); err != nil {
		return urza.ModelVersion{}, fmt.Errorf("value publish: %w", err)
	}
	if _, err := Load(dir); err != nil {
		return urza.ModelVersion{}, fmt.Errorf("value publish %s: %w", dir, err)
	}
	manifest, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return urza.ModelVersion{}, fmt.Errorf("value publish %s: %v: %w", dir, err, errcode.ErrIO)
	}
	weights, err := os.ReadFile(filepath.Join(dir, WeightsFile))
	if err != nil {
		return urza.ModelVersion{}, fmt.Errorf("value publish %s: %v: %w", dir, err, errcode.ErrIO)
	}
	v, err := store.PutModel(name, manifest, weights)
	if err != nil {
		return urza.ModelVersion{}, fmt.Errorf("value publish %s: %w", dir, err)
	}
	return v, nil
}
