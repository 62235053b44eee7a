package urza_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/urza"
)

func episodeRun(id string) map[string]any {
	return map[string]any{"run_id": id, "metric": 91.5, "flops": 1.25e9, "params": 4200, "proposals": 3, "refused": 0,
		"germinations": 1, "fossilizations": 1, "rollbacks": 0, "wall": 2.5}
}

// experience returns a valid experience record of mode policy (or, with
// mode "heuristic", of a behaviour-cloning run), with fields overridden by
// extra (nil deletes).
func experience(t testing.TB, run string, mode string, episode int, extra map[string]any) []byte {
	t.Helper()
	graph := map[string]any{"slots": 2, "nodes": []any{map[string]any{"kind": "layer"}}}
	rec := map[string]any{
		"trainer_run": run, "episode": episode, "mode": mode,
		"spec":  map[string]any{"family": "spirals", "index": 0, "seed": 33432, "epochs": 6, "quick": true},
		"run":   episodeRun("r-policy"),
		"steps": []any{map[string]any{"graph": graph, "action": map[string]any{"op": 0, "target": -1, "template": -1, "size": -1}}},
	}
	if mode == "policy" {
		rec["baseline"] = episodeRun("r-base")
		rec["reward"] = map[string]any{"accuracy": 0.5, "compute": -0.25, "params": 0, "stability": -1, "total": -0.75}
		rec["checkpoint"] = map[string]any{"episodes": episode - 1, "weights_sha256": strings.Repeat("cd", 32)}
		rec["steps"] = []any{
			map[string]any{"graph": graph, "action": map[string]any{"op": 1, "target": 2, "template": 0, "size": 1},
				"log_prob": -1.5, "value": 0.25, "applied": true},
			map[string]any{"graph": graph, "action": map[string]any{"op": 0, "target": -1, "template": -1, "size": -1},
				"log_prob": -0.1, "value": 0.5, "applied": true},
		}
	}
	for k, v := range extra {
		if v == nil {
			delete(rec, k)
		} else {
			rec[k] = v
		}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestExperienceRoundTripOrderAndRuns(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	puts := []struct {
		run, mode string
		episode   int
		key       string
	}{
		{"ppo-a", "policy", 2, "ppo-a/policy-000000002"},
		{"ppo-a", "policy", 10, "ppo-a/policy-000000010"},
		{"ppo-a", "heuristic", 1, "ppo-a/heuristic-000000001"},
		{"ppo-a", "policy", 1, "ppo-a/policy-000000001"},
		{"ppo-b", "policy", 1, "ppo-b/policy-000000001"},
		// The same episode again (a resumed trainer) replaces its record.
		{"ppo-a", "policy", 2, "ppo-a/policy-000000002"},
	}
	for _, p := range puts {
		key, err := s.PutExperience(experience(t, p.run, p.mode, p.episode, nil))
		if err != nil || key != p.key {
			t.Fatalf("put %s %s %d: key %q, %v", p.run, p.mode, p.episode, key, err)
		}
	}
	recs, err := s.Experience("ppo-a")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range recs {
		var e urza.Experience
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatal(err)
		}
		if e.Schema != urza.ExperienceSchema || e.Written.IsZero() {
			t.Fatalf("record %s: schema %d, written %v: want stamped", e.Name(), e.Schema, e.Written)
		}
		got = append(got, e.Name())
	}
	want := "heuristic-000000001 policy-000000001 policy-000000002 policy-000000010"
	if strings.Join(got, " ") != want {
		t.Fatalf("order %v, want %s", got, want)
	}
	var first urza.Experience
	_ = json.Unmarshal(recs[1], &first)
	if first.Baseline.RunID != "r-base" || first.Run.RunID != "r-policy" || *first.Steps[0].LogProb != -1.5 ||
		!*first.Steps[0].Applied || first.Checkpoint.Episodes != 0 || first.Reward.Total != -0.75 {
		t.Fatalf("policy record read back as %+v", first)
	}
	runs, err := s.ExperienceRuns()
	if err != nil || len(runs) != 2 {
		t.Fatalf("runs %+v, %v", runs, err)
	}
	for _, r := range runs {
		if r.TrainerRun == "ppo-a" && (r.Episodes["policy"] != 3 || r.Episodes["heuristic"] != 1 || r.LastEpisode["policy"] != 10) {
			t.Fatalf("ppo-a summary %+v", r)
		}
	}
	if recs, err := s.Experience("nobody"); err != nil || len(recs) != 0 {
		t.Fatalf("a run with no records: %d, %v", len(recs), err)
	}
	// The artifact checks ignore experience records.
	rep, err := s.Verify(t.Context())
	if err != nil || len(rep.Bad) != 0 || len(rep.Leftovers) != 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	if n := s.OpStats()[urza.OpPutExperience].Calls; n != uint64(len(puts)) {
		t.Fatalf("put_experience counted %d times, want %d", n, len(puts))
	}
}

func TestPutExperienceRefusesBadRecordsNamingTheField(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	step := func(extra map[string]any) []any {
		st := map[string]any{"graph": map[string]any{"nodes": []any{}}, "action": map[string]any{"op": 0, "target": -1, "template": -1, "size": -1},
			"log_prob": -0.5, "value": 0.1, "applied": false}
		for k, v := range extra {
			if v == nil {
				delete(st, k)
			} else {
				st[k] = v
			}
		}
		return []any{st}
	}
	noMetric := episodeRun("r1")
	delete(noMetric, "metric")
	badRun := episodeRun("../r1")
	negative := episodeRun("r1")
	negative["refused"] = -1
	cases := []struct {
		name  string
		mode  string
		extra map[string]any
		field string // the error must name it
	}{
		{"escaping trainer run", "policy", map[string]any{"trainer_run": "../x"}, "trainer_run"},
		{"newer schema", "policy", map[string]any{"schema": 2}, "schema"},
		{"episode 0", "policy", map[string]any{"episode": 0}, "episode"},
		{"unknown mode", "policy", map[string]any{"mode": "random"}, "mode"},
		{"no spec", "policy", map[string]any{"spec": nil}, "spec"},
		{"spec without seed", "policy", map[string]any{"spec": map[string]any{"family": "x", "index": 0, "epochs": 3, "quick": true}}, "spec.seed"},
		{"run metric missing", "policy", map[string]any{"run": noMetric}, "run.metric"},
		{"run id escaping", "policy", map[string]any{"run": badRun}, "run.run_id"},
		{"negative counter", "policy", map[string]any{"baseline": negative}, "baseline.refused"},
		{"policy without baseline", "policy", map[string]any{"baseline": nil}, "baseline"},
		{"policy without reward", "policy", map[string]any{"reward": nil}, "reward"},
		{"total not the sum", "policy", map[string]any{"reward": map[string]any{"accuracy": 1, "compute": 0, "params": 0, "stability": 0, "total": 2}}, "reward.total"},
		{"reward term null", "policy", map[string]any{"reward": map[string]any{"accuracy": nil, "compute": 0, "params": 0, "stability": 0, "total": 0}}, "reward.accuracy"},
		{"bad weights hash", "policy", map[string]any{"checkpoint": map[string]any{"episodes": 1, "weights_sha256": "abc"}}, "weights_sha256"},
		{"step without log_prob", "policy", map[string]any{"steps": step(map[string]any{"log_prob": nil})}, "steps[0].log_prob"},
		{"step without applied", "policy", map[string]any{"steps": step(map[string]any{"applied": nil})}, "steps[0].applied"},
		{"positive log_prob", "policy", map[string]any{"steps": step(map[string]any{"log_prob": 0.5})}, "steps[0].log_prob"},
		{"graph not an object", "policy", map[string]any{"steps": step(map[string]any{"graph": "g"})}, "steps[0].graph"},
		{"action without op", "policy", map[string]any{"steps": step(map[string]any{"action": map[string]any{"target": -1, "template": -1, "size": -1}})}, "steps[0].action.op"},
		{"no steps", "policy", map[string]any{"steps": nil}, "steps"},
		{"unknown field", "policy", map[string]any{"surprise": 1}, "surprise"},
		{"heuristic with reward", "heuristic", map[string]any{"reward": map[string]any{"accuracy": 0, "compute": 0, "params": 0, "stability": 0, "total": 0}}, "reward"},
		{"heuristic step with a value", "heuristic", map[string]any{"steps": step(nil)}, "steps[0]"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.PutExperience(experience(t, "ppo-a", tc.mode, 1, tc.extra))
			if !errors.Is(err, urza.ErrInvalidExperience) || errcode.Of(err) != errcode.Invalid {
				t.Fatalf("err %v, want ErrInvalidExperience", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err %q does not name %s", err, tc.field)
			}
		})
	}
	if recs, err := s.Experience("ppo-a"); err != nil || len(recs) != 0 {
		t.Fatalf("refused records were stored: %d %v", len(recs), err)
	}
	// The negative control: the unmodified records are accepted.
	for _, mode := range urza.ExperienceModes {
		if _, err := s.PutExperience(experience(t, "ppo-a", mode, 1, nil)); err != nil {
			t.Fatalf("valid %s record refused: %v", mode, err)
		}
	}
	if _, err := s.Experience("../etc"); !errors.Is(err, urza.ErrInvalidExperience) {
		t.Fatalf("experience of a path-like run: %v", err)
	}
}

// TestExperienceReadersSkipPartialWritesAndReportCorruption: a writer
// killed mid-write leaves at most a temp file, which readers do not list;
// a record that was damaged in place is ErrCorrupt, naming its file.
func TestExperienceReadersSkipPartialWritesAndReportCorruption(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	if _, err := s.PutExperience(experience(t, "ppo-a", "policy", 1, nil)); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "experience", "ppo-a")
	full := experience(t, "ppo-a", "policy", 2, nil)
	if err := os.WriteFile(filepath.Join(dir, ".tmp-policy-000000002.json-123"), full[:len(full)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	recs, err := s.Experience("ppo-a")
	if err != nil || len(recs) != 1 {
		t.Fatalf("with a temp file beside: %d records, %v", len(recs), err)
	}
	if runs, err := s.ExperienceRuns(); err != nil || len(runs) != 1 || runs[0].Episodes["policy"] != 1 {
		t.Fatalf("runs with a temp file beside: %+v, %v", runs, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "policy-000000001.json"), []byte(`{"trainer_run":"ppo-a"`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Experience("ppo-a"); !errors.Is(err, urza.ErrCorrupt) || !strings.Contains(err.Error(), "policy-000000001") {
		t.Fatalf("damaged record: %v", err)
	}
}
