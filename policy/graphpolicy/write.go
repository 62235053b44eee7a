package graphpolicy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/gnn"
	"github.com/esper-morph/esper/core/safetensors"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// WriteRandom writes a graph policy with random weights (gnn.RandomTensors,
// seeded with seed) of the given width and rounds, for this library's
// features, ops, templates and sizes, to dir (created if needed). It makes
// models of a given size whose weights nobody trained: for tests and
// benchmarks. training is written as the manifest's record.
func WriteRandom(dir string, hidden, rounds int, seed uint64, training any) error {
	tensors, err := gnn.RandomTensors(LibraryManifest(hidden, rounds).Config(), seed)
	if err != nil {
		return fmt.Errorf("graphpolicy: write random model: %w", err)
	}
	return WriteTensors(dir, hidden, rounds, tensors, training)
}

// LibraryManifest is the manifest of a network of the given width and
// rounds for this library's features, ops, templates and sizes (no
// training record).
func LibraryManifest(hidden, rounds int) Manifest {
	templates := blueprint.Templates()
	names := make([]string, len(templates))
	for i, t := range templates {
		names[i] = t.Name
	}
	return Manifest{Kind: Kind, Schema: Schema, NodeFeatures: NodeFeatureNames(), GlobalFeatures: GlobalFeatureNames(),
		Ops: tamiyo.MoveOps(), Templates: names, Sizes: tamiyo.SizeScales(), Hidden: hidden, Rounds: rounds}
}

// WriteTensors writes a model folder of LibraryManifest(hidden, rounds) with
// the given weights (GraphPolicy's state_dict names) and training record.
func WriteTensors(dir string, hidden, rounds int, tensors []safetensors.F32, training any) error {
	m := LibraryManifest(hidden, rounds)
	rec, err := json.Marshal(training)
	if err != nil {
		return fmt.Errorf("graphpolicy: write model: training: %w", err)
	}
	m.Training = rec
	weights, err := safetensors.EncodeF32(tensors)
	if err != nil {
		return fmt.Errorf("graphpolicy: write model: %w", err)
	}
	doc, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return fmt.Errorf("graphpolicy: write model: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("graphpolicy: write model: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, WeightsFile), weights, 0o644); err != nil {
		return fmt.Errorf("graphpolicy: write model: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), doc, 0o644); err != nil {
		return fmt.Errorf("graphpolicy: write model: %w", err)
	}
	return nil
}
