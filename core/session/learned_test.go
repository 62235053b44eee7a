package session_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
	"github.com/esper-morph/esper/policy/value"
)

func learnedConfig(t *testing.T, bias float64) (session.Config, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "model")
	if err := value.WriteLinear(dir, nil, bias, map[string]any{"by": "hand"}); err != nil {
		t.Fatal(err)
	}
	cfg := baseConfig()
	cfg.Policy = "learned"
	cfg.Controller = tamiyo.Config{ValueModel: dir}
	return cfg, dir
}

func TestLearnedSessionGrowsAndResumesElsewhere(t *testing.T) {
	cfg, dir := learnedConfig(t, 0.5)
	s := newSession(t, cfg)
	res, err := s.EndEpoch(tamiyo.Metrics{})
	if err != nil {
		t.Fatal(err)
	}
	d := res.Decisions[0]
	if d.Op != tamiyo.Germinate || !d.Applied || d.PredictedValue == nil || *d.PredictedValue != 0.5 {
		t.Fatalf("decision %+v, want an applied germination predicting 0.5", d)
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Another machine: the model lives elsewhere and the saving machine's folder is gone.
	moved := filepath.Join(t.TempDir(), "installed")
	if err := os.Rename(dir, moved); err != nil {
		t.Fatal(err)
	}
	cfg.Controller.ValueModel = moved
	r := newSession(t, cfg)
	if err := r.Restore(snap); err != nil {
		t.Fatalf("restore with the model at its new folder: %v", err)
	}
	st, err := r.Stats()
	if err != nil || st.Counters.Germinations != 1 || st.Policy != "learned" {
		t.Fatalf("restored stats %+v, %v", st, err)
	}
}

func TestLearnedSessionRefusals(t *testing.T) {
	cfg, dir := learnedConfig(t, 0.5)
	if err := os.Remove(filepath.Join(dir, value.WeightsFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := session.New(cfg); err == nil || !strings.Contains(err.Error(), "esper simic train") {
		t.Fatalf("a model folder without weights: %v, want an error saying how to train one", err)
	}
}
