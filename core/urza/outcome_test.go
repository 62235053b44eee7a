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

// outcome returns a valid outcome record with fields overridden by extra.
func outcome(t testing.TB, run string, step int64, extra map[string]any) []byte {
	t.Helper()
	rec := map[string]any{
		"run_id": run, "seq": 0, "layer": 1, "layer_name": "fc1", "slot": 0, "policy": "heuristic",
		"reason": "plateau", "observation": map[string]any{"epoch": 3}, "blueprint_id": strings.Repeat("ab", 32),
		"template": "lowrank", "template_params": map[string]any{"rank": 4}, "blueprint": map[string]any{"template": "lowrank"},
		"host": map[string]any{"kind": "linear", "in": 8, "out": 8}, "param_count": 64, "flops_per_sample": 128,
		"train_flops": 3840, "contributions": []any{}, "final_state": "FOSSILIZED", "ended_by": "fossilized",
		"final_reason": "contribution 0.1", "germinated_step": step, "germinated_epoch": 3, "ended_step": step + 10,
		"ended_epoch": 5, "states": []any{map[string]any{"state": "TRAINING", "from_step": step, "to_step": step + 10,
			"steps": 10, "from_epoch": 3, "to_epoch": 5, "epochs": 2, "reason": "", "samples": 10, "train_flops": 3840}},
		"written": "0001-01-01T00:00:00Z",
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

func TestOutcomesRoundTripAndRuns(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	k1, err := s.PutOutcome(outcome(t, "run-a", 20, nil))
	if err != nil {
		t.Fatal(err)
	}
	if k1 != "run-a/000000000020-1-0-0" {
		t.Fatalf("key %q", k1)
	}
	if _, err := s.PutOutcome(outcome(t, "run-a", 5, map[string]any{"seq": 1, "final_state": "PRUNED", "ended_by": "pruned"})); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutOutcome(outcome(t, "run-b", 7, nil)); err != nil {
		t.Fatal(err)
	}
	// Writing the same germination again replaces its record.
	if _, err := s.PutOutcome(outcome(t, "run-a", 20, nil)); err != nil {
		t.Fatal(err)
	}
	recs, err := s.Outcomes("run-a")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	var first urza.Outcome
	if err := json.Unmarshal(recs[0], &first); err != nil {
		t.Fatal(err)
	}
	if first.GerminatedStep != 5 || first.Schema != urza.OutcomeSchema || first.Written.IsZero() {
		t.Fatalf("first record %+v: want step 5 first, schema stamped, written set", first)
	}
	all, err := s.Outcomes("")
	if err != nil || len(all) != 3 {
		t.Fatalf("all outcomes: %d, %v", len(all), err)
	}
	runs, err := s.Runs()
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 2 {
		t.Fatalf("runs %+v", runs)
	}
	for _, r := range runs {
		if r.RunID == "run-a" && (r.Outcomes != 2 || r.Ended["pruned"] != 1 || r.Ended["fossilized"] != 1 || r.ParamsFossilized != 64 || r.FirstStep != 5) {
			t.Fatalf("run-a summary %+v", r)
		}
	}
	// No temp files are left behind, and the store's artifact checks ignore the outcome log.
	entries, _ := os.ReadDir(filepath.Join(root, "outcomes", "run-a"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp-") {
			t.Fatalf("temp file left: %s", e.Name())
		}
	}
	rep, err := s.Verify(t.Context())
	if err != nil || len(rep.Bad) != 0 || len(rep.Leftovers) != 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func TestPutOutcomeRefusesBadRecords(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	for name, extra := range map[string]map[string]any{
		"escaping run id":     {"run_id": "../x"},
		"dot run id":          {"run_id": ".hidden"},
		"newer schema":        {"schema": 2},
		"bad blueprint id":    {"blueprint_id": "xyz"},
		"unknown final state": {"final_state": "GONE"},
		"unknown end":         {"ended_by": "magic"},
		"end before start":    {"ended_step": 1},
		"flops not summed":    {"train_flops": 1},
		"span flops not Go's": {"train_flops": 3841, "states": []any{map[string]any{"state": "TRAINING", "from_step": 20,
			"to_step": 30, "steps": 10, "from_epoch": 3, "to_epoch": 5, "epochs": 2, "reason": "", "samples": 10, "train_flops": 3841}}},
		"no states":           {"states": []any{}},
		"observation missing": {"observation": nil},
		"unknown field":       {"surprise": 1},
		"no policy":           {"policy": ""},
		"bad kernel id":       {"kernel_id": "abc"},
	} {
		_, err := s.PutOutcome(outcome(t, "run-a", 20, extra))
		if !errors.Is(err, urza.ErrInvalidOutcome) || errcode.Of(err) != errcode.Invalid {
			t.Errorf("%s: err %v, want ErrInvalidOutcome", name, err)
		}
	}
	if recs, err := s.Outcomes("run-a"); err != nil || len(recs) != 0 {
		t.Fatalf("refused records were stored: %d %v", len(recs), err)
	}
	if _, err := s.Outcomes("../etc"); !errors.Is(err, urza.ErrInvalidOutcome) {
		t.Fatalf("outcomes of a path-like run: %v", err)
	}
}

func TestOutcomeCorruptRecordIsReported(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	if _, err := s.PutOutcome(outcome(t, "run-a", 20, nil)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "outcomes", "run-a", "000000000020-1-0-0.json")
	if err := os.WriteFile(path, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Outcomes("run-a"); !errors.Is(err, urza.ErrCorrupt) {
		t.Fatalf("corrupt record: %v", err)
	}
}

// TestParseOutcomeFillsTrainFLOPs: a record that leaves train_flops 0 gets
// Go's estimate, 3 x flops_per_sample x samples per span, and their sum.
func TestParseOutcomeFillsTrainFLOPs(t *testing.T) {
	span := func(state string, samples int) map[string]any {
		return map[string]any{"state": state, "from_step": 20, "to_step": 30, "steps": 10, "from_epoch": 3,
			"to_epoch": 5, "epochs": 2, "reason": "", "samples": samples, "train_flops": 0}
	}
	o, err := urza.ParseOutcome(outcome(t, "run-a", 20, map[string]any{"train_flops": 0,
		"states": []any{span("GERMINATED", 0), span("TRAINING", 10), span("BLENDING", 7)}}))
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{0, 3 * 128 * 10, 3 * 128 * 7}
	for i, sp := range o.States {
		if sp.TrainFLOPs != want[i] {
			t.Errorf("states[%d] train_flops %d, want %d", i, sp.TrainFLOPs, want[i])
		}
	}
	if o.TrainFLOPs != 3*128*17 {
		t.Errorf("train_flops %d, want %d", o.TrainFLOPs, 3*128*17)
	}
	if got := urza.TrainFLOPs(1<<62, 4); got != 1<<63-1 {
		t.Errorf("TrainFLOPs saturates at MaxInt64: got %d", got)
	}
}
