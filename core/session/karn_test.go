package session_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/core/urza"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// putRecord stores a measured outcome record of a lowrank seed on host.
func putRecord(t *testing.T, s *urza.Store, run string, seq int, host blueprint.Host, rank int64, gain float64) {
	t.Helper()
	ir, err := blueprint.Instantiate("lowrank", blueprint.Params{"rank": rank}, host)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := ir.ID()
	irb, _ := ir.Canonical()
	rec := map[string]any{
		"run_id": run, "seq": seq, "layer": 0, "layer_name": "fc1", "slot": 0, "policy": "heuristic", "reason": "test",
		"observation": map[string]any{"epoch": 3}, "blueprint_id": id, "template": "lowrank", "template_params": ir.Params,
		"blueprint": json.RawMessage(irb), "host": host, "param_count": ir.ParamCount, "flops_per_sample": ir.FLOPsPerSample,
		"train_flops": 0, "contributions": []any{map[string]any{"epoch": 4, "val_loss": 1 - gain, "val_loss_without": 1.0, "delta_loss": gain}},
		"final_state": "FOSSILIZED", "ended_by": "fossilized", "final_reason": "", "germinated_step": seq, "germinated_epoch": 3,
		"ended_step": seq + 1, "ended_epoch": 4, "states": []any{map[string]any{"state": "TRAINING", "from_step": seq, "to_step": seq + 1,
			"steps": 1, "from_epoch": 3, "to_epoch": 4, "epochs": 1, "reason": "", "samples": 1, "train_flops": 0}},
	}
	b, _ := json.Marshal(rec)
	if _, err := s.PutOutcome(b); err != nil {
		t.Fatal(err)
	}
}

// TestSearchReadsHistoryFromUrza: with controller.search and urza set, the
// session's Tamiyo asks Karn, which reads the store's records of hosts of
// the layer's layout; without search no request is made (the control).
func TestSearchReadsHistoryFromUrza(t *testing.T) {
	root := t.TempDir()
	store, err := urza.Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	host := blueprint.Host{Kind: "linear", In: 16, Out: 32}
	for i := range 3 {
		putRecord(t, store, fmt.Sprintf("run-%d", i), i, host, 2+int64(i), 0.05)
	}
	putRecord(t, store, "run-small", 9, blueprint.Host{Kind: "linear", In: 4, Out: 4}, 1, 0.01)
	_ = store.Close()
	for _, search := range []bool{true, false} {
		t.Run(fmt.Sprintf("search=%v", search), func(t *testing.T) {
			cfg := baseConfig()
			cfg.Layers = cfg.Layers[:1]
			cfg.Policy = "heuristic"
			cfg.Controller = tamiyo.Config{Search: search, Patience: 1, Threshold: 0.5}
			cfg.Urza = root
			s := newSession(t, cfg)
			var germ *session.DecisionResult
			for e := 0; e < 4 && germ == nil; e++ {
				res, err := s.EndEpoch(tamiyo.Metrics{ValLoss: nissa.Measure(1), TrainLoss: nissa.Measure(1)})
				if err != nil {
					t.Fatal(err)
				}
				for i := range res.Decisions {
					if res.Decisions[i].Op == tamiyo.Germinate {
						germ = &res.Decisions[i]
					}
				}
			}
			if germ == nil || !germ.Applied {
				t.Fatalf("no germination applied: %+v", germ)
			}
			st, err := s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			if !search {
				if strings.Contains(germ.Reason, "karn request") || st.Karn != nil {
					t.Fatalf("a request without search: %s", germ.Reason)
				}
				return
			}
			if !strings.Contains(germ.Reason, "4 past trials on linear hosts") || !strings.Contains(germ.Reason, "took candidate") {
				t.Fatalf("reason %s", germ.Reason)
			}
			if st.Karn == nil || st.Karn.Requests != 1 || st.Karn.Trials != 4 || st.Karn.LastReadError != "" {
				t.Fatalf("karn stats %+v", st.Karn)
			}
		})
	}
}
