package session_test

import (
	"testing"

	"github.com/esper-morph/esper/core/session"
)

// firstDiff is the name of the first part on which two hashes differ ("" when none).
func firstDiff(a, b session.StateHash) string {
	for i := range a.Parts {
		if i >= len(b.Parts) || a.Parts[i].SHA256 != b.Parts[i].SHA256 {
			return a.Parts[i].Name
		}
	}
	if len(b.Parts) > len(a.Parts) {
		return b.Parts[len(a.Parts)].Name
	}
	return ""
}

func TestStateHashNamesFirstDifference(t *testing.T) {
	spec := `{"template":"residual_mlp","params":{"width":4}}`
	tests := []struct {
		name string
		// second changes the second session after both ran the same start.
		second func(t *testing.T, s *session.Session)
		want   string
	}{
		{"same inputs", func(t *testing.T, s *session.Session) {}, ""},
		{"one more step", func(t *testing.T, s *session.Session) { step(t, s, 1) }, "step"},
		{"a seed pruned", func(t *testing.T, s *session.Session) {
			if _, err := s.Prune(0, 0, "by hand"); err != nil {
				t.Fatalf("Prune: %v", err)
			}
		}, "seed fc1/0"},
		{"a seed advanced", func(t *testing.T, s *session.Session) {
			if _, err := s.Advance(0, 0, "by hand"); err != nil {
				t.Fatalf("Advance: %v", err)
			}
		}, "seed fc1/0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newSession(t, baseConfig()), newSession(t, baseConfig())
			for _, s := range []*session.Session{a, b} {
				germinate(t, s, 0, 0, spec)
				step(t, s, 3)
			}
			tc.second(t, b)
			ha, err := a.StateHash()
			if err != nil {
				t.Fatalf("StateHash: %v", err)
			}
			hb, err := b.StateHash()
			if err != nil {
				t.Fatalf("StateHash: %v", err)
			}
			if got := firstDiff(ha, hb); got != tc.want {
				t.Fatalf("first difference %q, want %q", got, tc.want)
			}
			if (ha.SHA256 == hb.SHA256) != (tc.want == "") {
				t.Fatalf("overall hashes equal=%v, want %v", ha.SHA256 == hb.SHA256, tc.want == "")
			}
		})
	}
}

func TestStateHashIgnoresLogSettingsAndSurvivesRestore(t *testing.T) {
	cfg := baseConfig()
	cfg.Metrics = session.MetricsConfig{Run: "run-a", Rank: 0}
	a := newSession(t, cfg)
	cfg.LogPath = t.TempDir() + "/run.jsonl"
	cfg.Metrics = session.MetricsConfig{Run: "run-a", Rank: 1} // another rank of the same run
	cfg.Urza = t.TempDir()                                     // with its own store folder
	b := newSession(t, cfg)
	germinate(t, a, 0, 1, `{"template":"residual_mlp","params":{"width":4}}`)
	step(t, a, 5)
	snap, err := a.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if err := b.Restore(snap); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	ha, _ := a.StateHash()
	hb, _ := b.StateHash()
	if ha.SHA256 != hb.SHA256 {
		t.Fatalf("restored session hashes differently; first difference %q", firstDiff(ha, hb))
	}
}
