package session_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/core/urza"
	"github.com/esper-morph/esper/policy/tamiyo"
	"github.com/esper-morph/esper/policy/value"
)

var nan = math.NaN()

// publish writes a linear value model (bias alone) and publishes it as a
// version of "value"; it returns the version id.
func publish(t *testing.T, store *urza.Store, bias float64) string {
	t.Helper()
	dir := t.TempDir()
	if err := value.WriteLinear(dir, nil, bias, map[string]any{"by": "rollout_test"}); err != nil {
		t.Fatal(err)
	}
	v, err := value.Publish(store, "value", dir)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // publication order is the records' modification time
	return v.ID
}

// publishPredictor fits Karn's predictor on n trials from 4 runs (gain a
// function of the residual_mlp width) and publishes it as a version of
// "pred"; it returns the version id. Versions fitted on different n are
// told apart by their record count.
func publishPredictor(t *testing.T, store *urza.Store, n int) string {
	t.Helper()
	host := blueprint.Host{Kind: blueprint.HostLinear, In: 16, Out: 32}
	trials := make([]karn.Trial, n)
	for i := range trials {
		ir, err := blueprint.Instantiate("residual_mlp", blueprint.Params{"width": int64(2 + i%13)}, host)
		if err != nil {
			t.Fatal(err)
		}
		trials[i] = karn.Trial{Run: fmt.Sprintf("run%d", i%4), Template: "residual_mlp", Params: ir.Params, Host: host,
			ParamCount: ir.ParamCount, FLOPsPerSample: ir.FLOPsPerSample, Gain: 0.01 * math.Log1p(float64(ir.ParamCount))}
	}
	p, err := karn.Fit(trials)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := karn.WritePredictor(dir, p, nil); err != nil {
		t.Fatal(err)
	}
	v, err := karn.PublishPredictor(store, "pred", dir)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // publication order is the records' modification time
	return v.ID
}

// artifact is one kind a rolling deployment follows, as the tests drive it.
type artifact struct {
	kind, name string
	// publish publishes version i (1, 2, ...) and returns its id.
	publish func(t *testing.T, store *urza.Store, i int) string
	// config sets a session up to follow the model.
	config func(cfg *session.Config)
}

func artifacts() []artifact {
	return []artifact{
		{session.ArtifactValueModel, "value",
			func(t *testing.T, store *urza.Store, i int) string { return publish(t, store, -1/float64(i)) },
			func(cfg *session.Config) {
				cfg.Policy = "learned"
				cfg.Controller = tamiyo.Config{ValueModel: "urza:value"}
			}},
		{session.ArtifactKarnPredictor, "pred",
			func(t *testing.T, store *urza.Store, i int) string { return publishPredictor(t, store, 16+4*i) },
			func(cfg *session.Config) {
				cfg.Policy = "heuristic"
				cfg.Controller = tamiyo.Config{Search: true}
				cfg.KarnPredictor = "urza:pred"
			}},
	}
}

// rolloutSession is a session following a's model in the store at root.
func rolloutSession(t *testing.T, a artifact, root string, margin float64, epochs int) *session.Session {
	t.Helper()
	cfg := baseConfig()
	a.config(&cfg)
	cfg.Urza = root
	cfg.Rollout = session.RolloutConfig{Margin: &margin, Epochs: epochs}
	return newSession(t, cfg, session.WithModelCache(t.TempDir()))
}

func active(t *testing.T, s *session.Session, kind string) string {
	t.Helper()
	st, ok, err := s.Rollout(kind)
	if err != nil || !ok {
		t.Fatalf("Rollout(%s): %v %v", kind, ok, err)
	}
	return st.Active
}

// TestRollout: for every artifact kind, v1 runs; v2 is published after
// epoch 1 and taken up at the end of epoch 2 (validation 1.0 then); the
// validation of the next K=2 epochs decides whether it is reverted.
func TestRollout(t *testing.T) {
	for _, a := range artifacts() {
		t.Run(a.kind, func(t *testing.T) { testRollout(t, a) })
	}
}

func testRollout(t *testing.T, a artifact) {
	for _, tc := range []struct {
		name    string
		val     []float64 // epochs 2..5
		actions []string
		after   []int // active version after epochs 2..5: 1 = v1, 2 = v2
	}{
		{"worse beyond the margin: revert", []float64{1.0, 1.2, 1.0, 1.0}, []string{"switch", "revert"}, []int{2, 1, 1, 1}},
		{"worse at the K-th epoch: revert", []float64{1.0, 1.0, 1.1, 1.0}, []string{"switch", "revert"}, []int{2, 2, 1, 1}},
		{"within the margin: kept", []float64{1.0, 1.05, 0.9, 3.0}, []string{"switch"}, []int{2, 2, 2, 2}},
		{"non-finite: revert", []float64{1.0, nan, 1.0, 1.0}, []string{"switch", "revert"}, []int{2, 1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			store, err := urza.Open(root, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			v1 := a.publish(t, store, 1)
			s := rolloutSession(t, a, root, 0.05, 2)
			var acts, seen []string
			var fitted []int // Karn's predictor's records after each epoch (karn_predictor)
			for e := 0; e < 6; e++ {
				v := 1.0
				if e >= 2 {
					v = tc.val[e-2]
				}
				res, err := s.EndEpoch(tamiyo.Metrics{Epoch: &e, ValLoss: nissa.Measure(v)})
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range res.Rollout {
					acts = append(acts, r.Action)
				}
				if e == 1 {
					a.publish(t, store, 2)
				}
				if e < 2 && active(t, s, a.kind) != v1 {
					t.Fatalf("epoch %d: active %s, want v1", e, active(t, s, a.kind))
				}
				if e >= 2 {
					seen = append(seen, active(t, s, a.kind))
				}
				if st, err := s.Stats(); err == nil && st.Karn != nil {
					fitted = append(fitted, st.Karn.FittedOn)
				}
			}
			if !slices.Equal(acts, tc.actions) {
				t.Fatalf("actions %v, want %v", acts, tc.actions)
			}
			vs, err := store.ModelVersions(a.name)
			if err != nil || len(vs) != 2 || vs[0].ID != v1 {
				t.Fatalf("versions %+v %v", vs, err)
			}
			v2 := vs[1].ID
			names := map[string]int{v1: 1, v2: 2}
			var after []int
			for _, id := range seen {
				after = append(after, names[id])
			}
			if !slices.Equal(after, tc.after) {
				t.Fatalf("active after epochs 2..5: v%v, want v%v", after, tc.after)
			}
			if got := names[active(t, s, a.kind)]; got != tc.after[3] {
				t.Fatalf("active v%d, want v%d", got, tc.after[3])
			}
			if a.kind == session.ArtifactKarnPredictor {
				// Karn ranks with the version in use: v1 fitted on 20 records, v2 on 24.
				want := []int{20, 20}
				for _, v := range tc.after {
					want = append(want, 16+4*v)
				}
				if !slices.Equal(fitted, want) {
					t.Fatalf("Karn's predictor records after each epoch %v, want %v", fitted, want)
				}
			}
			// The growth log records every change with both versions.
			var logged []session.RolloutEvent
			gl, err := s.GrowthLog()
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range gl.Entries {
				if e.Kind == "rollout" {
					logged = append(logged, *e.Rollout)
				}
			}
			if len(logged) != len(tc.actions) || logged[0].From != v1 || logged[0].To != v2 || logged[0].Epoch != 2 ||
				logged[0].Artifact != a.kind || logged[0].Model != a.name {
				t.Fatalf("growth log %+v", logged)
			}
		})
	}
}

// TestRolloutSnapshot: the active version is in the snapshot and the
// state hash; a session restored from it uses that version, not the
// newest.
func TestRolloutSnapshot(t *testing.T) {
	for _, a := range artifacts() {
		t.Run(a.kind, func(t *testing.T) { testRolloutSnapshot(t, a) })
	}
}

func testRolloutSnapshot(t *testing.T, a artifact) {
	root := t.TempDir()
	store, err := urza.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	v1 := a.publish(t, store, 1)
	s := rolloutSession(t, a, root, 0.05, 2)
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	v2 := a.publish(t, store, 2)
	r := rolloutSession(t, a, root, 0.05, 2)
	if active(t, r, a.kind) != v2 {
		t.Fatal("a new session must load the newest version")
	}
	h1, _ := s.StateHash()
	h2, _ := r.StateHash()
	if h1.SHA256 == h2.SHA256 {
		t.Fatal("the state hash must cover the version in use")
	}
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if active(t, r, a.kind) != v1 {
		t.Fatalf("restored: active %s, want v1 %s", active(t, r, a.kind), v1)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(snap, &doc); err != nil || doc["rollouts"] == nil {
		t.Fatalf("snapshot has no rollout: %v", err)
	}
}

// TestRolloutErrors: no version published, a corrupted version.
func TestRolloutErrors(t *testing.T) {
	root := t.TempDir()
	cfg := baseConfig()
	cfg.Policy = "learned"
	cfg.Controller = tamiyo.Config{ValueModel: "urza:value"}
	cfg.Urza = root
	if _, err := session.New(cfg, session.WithModelCache(t.TempDir())); !errors.Is(err, session.ErrConfig) {
		t.Fatalf("no version: %v", err)
	}
	store, err := urza.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	id := publish(t, store, -1)
	w := filepath.Join(root, "models", "value", id+".safetensors")
	b, _ := os.ReadFile(w)
	b[len(b)-1] ^= 0xff
	if err := os.WriteFile(w, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := session.New(cfg, session.WithModelCache(t.TempDir())); !errors.Is(err, urza.ErrCorrupt) {
		t.Fatalf("corrupt version: %v", err)
	}
}

// TestKarnPredictorConfig: a predictor with no version published says how
// to publish one; karn_predictor without search is refused; a predictor
// folder (not in Urza) is used as it is, with no rolling deployment.
func TestKarnPredictorConfig(t *testing.T) {
	root := t.TempDir()
	a := artifacts()[1]
	cfg := baseConfig()
	a.config(&cfg)
	cfg.Urza = root
	if _, err := session.New(cfg, session.WithModelCache(t.TempDir())); !errors.Is(err, session.ErrConfig) ||
		!strings.Contains(err.Error(), "esper karn publish --name pred") {
		t.Fatalf("no version: %v", err)
	}
	cfg.Controller.Search = false
	if _, err := session.New(cfg); !errors.Is(err, session.ErrConfig) || !strings.Contains(err.Error(), "karn_search") {
		t.Fatalf("without search: %v", err)
	}
	store, err := urza.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	id := a.publish(t, store, 1)
	dir, err := store.ModelFolder("pred", id, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Controller.Search = true
	cfg.KarnPredictor = dir
	s := newSession(t, cfg)
	if st, err := s.Stats(); err != nil || st.Karn == nil || st.Karn.FittedOn != 20 {
		t.Fatalf("folder predictor: %+v %v", st.Karn, err)
	}
	if _, ok, _ := s.Rollout(session.ArtifactKarnPredictor); ok {
		t.Fatal("a predictor folder is no rolling deployment")
	}
}

// TestRolloutOlderSnapshot: a snapshot written before rollouts were per
// kind ("rollout": the value model's state, no kind) restores with its
// version; a snapshot following another model name is refused.
func TestRolloutOlderSnapshot(t *testing.T) {
	root := t.TempDir()
	store, err := urza.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	a := artifacts()[0]
	v1 := a.publish(t, store, 1)
	snap, err := rolloutSession(t, a, root, 0.05, 2).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(snap, &doc); err != nil {
		t.Fatal(err)
	}
	var states []map[string]any
	if err := json.Unmarshal(doc["rollouts"], &states); err != nil || len(states) != 1 || states[0]["kind"] != session.ArtifactValueModel {
		t.Fatalf("rollouts %s: %v", doc["rollouts"], err)
	}
	delete(states[0], "kind")
	old, _ := json.Marshal(states[0])
	delete(doc, "rollouts")
	doc["rollout"] = old
	older, _ := json.Marshal(doc)
	a.publish(t, store, 2)
	r := rolloutSession(t, a, root, 0.05, 2)
	if err := r.Restore(older); err != nil {
		t.Fatal(err)
	}
	if active(t, r, a.kind) != v1 {
		t.Fatalf("restored an older snapshot: active %s, want v1", active(t, r, a.kind))
	}
	states[0]["name"] = "other"
	other, _ := json.Marshal(states[0])
	doc["rollout"] = other
	b, _ := json.Marshal(doc)
	if err := r.Restore(b); !errors.Is(err, session.ErrSnapshot) {
		t.Fatalf("another model's snapshot: %v", err)
	}
	if active(t, r, a.kind) != v1 {
		t.Fatal("a refused restore must change nothing")
	}
}
