package session_test

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

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

// rolloutSession is a learned-policy session on "urza:value" in store.
func rolloutSession(t *testing.T, root string, margin float64, epochs int) *session.Session {
	t.Helper()
	cfg := baseConfig()
	cfg.Policy = "learned"
	cfg.Controller = tamiyo.Config{ValueModel: "urza:value"}
	cfg.Urza = root
	cfg.Rollout = session.RolloutConfig{Margin: &margin, Epochs: epochs}
	return newSession(t, cfg, session.WithModelCache(t.TempDir()))
}

func active(t *testing.T, s *session.Session) string {
	t.Helper()
	st, ok, err := s.Rollout()
	if err != nil || !ok {
		t.Fatalf("Rollout: %v %v", ok, err)
	}
	return st.Active
}

// TestRollout: v1 runs; v2 is published after epoch 1 and taken up at the
// end of epoch 2 (validation 1.0 then); the validation of the next K=2
// epochs decides whether it is reverted.
func TestRollout(t *testing.T) {
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
			v1 := publish(t, store, -1)
			s := rolloutSession(t, root, 0.05, 2)
			var acts, seen []string
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
					publish(t, store, -0.5)
				}
				if e < 2 && active(t, s) != v1 {
					t.Fatalf("epoch %d: active %s, want v1", e, active(t, s))
				}
				if e >= 2 {
					seen = append(seen, active(t, s))
				}
			}
			if !slices.Equal(acts, tc.actions) {
				t.Fatalf("actions %v, want %v", acts, tc.actions)
			}
			vs, err := store.ModelVersions("value")
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
			if got := names[active(t, s)]; got != tc.after[3] {
				t.Fatalf("active v%d, want v%d", got, tc.after[3])
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
			if len(logged) != len(tc.actions) || logged[0].From != v1 || logged[0].To != v2 || logged[0].Epoch != 2 {
				t.Fatalf("growth log %+v", logged)
			}
		})
	}
}

// TestRolloutSnapshot: the active version is in the snapshot; a session
// restored from it uses that version, not the newest.
func TestRolloutSnapshot(t *testing.T) {
	root := t.TempDir()
	store, err := urza.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	v1 := publish(t, store, -1)
	s := rolloutSession(t, root, 0.05, 2)
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	v2 := publish(t, store, -0.5)
	r := rolloutSession(t, root, 0.05, 2)
	if active(t, r) != v2 {
		t.Fatal("a new session must load the newest version")
	}
	if err := r.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if active(t, r) != v1 {
		t.Fatalf("restored: active %s, want v1 %s", active(t, r), v1)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(snap, &doc); err != nil || doc["rollout"] == nil {
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
