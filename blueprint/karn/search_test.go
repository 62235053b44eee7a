package karn

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
)

var testHosts = map[string]blueprint.Host{
	"linear":      {Kind: blueprint.HostLinear, In: 64, Out: 64},
	"linear_wide": {Kind: blueprint.HostLinear, In: 784, Out: 10},
	"block":       {Kind: blueprint.HostBlock, In: 32, Out: 48},
	"conv2d":      {Kind: blueprint.HostConv2d, In: 16, Out: 32, Kernel: 3, Stride: 1, Padding: 1, Spatial: []int64{16, 16}},
	"conv2d_s2":   {Kind: blueprint.HostConv2d, In: 8, Out: 8, Kernel: 3, Stride: 2, Padding: 1},
	"conv1d":      {Kind: blueprint.HostConv1d, In: 12, Out: 12, Kernel: 3, Stride: 1, Padding: 1},
	"tokens":      {Kind: blueprint.HostResidual, Dim: 32},
	"residual_2d": {Kind: blueprint.HostResidual, Dim: 16, Spatial: []int64{8, 8}},
}

func TestSearchCandidatesValidWithinBudget(t *testing.T) {
	for name, host := range testHosts {
		for _, budget := range []blueprint.Budget{{MaxParams: 5000}, {MaxParams: 800, MaxFLOPs: 2000000}, {}} {
			t.Run(fmt.Sprintf("%s/%d/%d", name, budget.MaxParams, budget.MaxFLOPs), func(t *testing.T) {
				ans, err := Search(Request{Host: host, Budget: budget, Seed: 7}, nil, "test")
				if err != nil {
					t.Fatal(err)
				}
				if len(ans.Candidates) == 0 {
					t.Fatalf("no candidate: %s", ans.Note)
				}
				if ans.RankedBy != RankedByPrior {
					t.Fatalf("ranked by %q without a predictor", ans.RankedBy)
				}
				seen := map[string]bool{}
				for _, c := range ans.Candidates {
					if err := blueprint.Check(c.Blueprint(), host, budget); err != nil {
						t.Fatalf("candidate %s %v: %v", c.Template, c.Params, err)
					}
					ir, err := blueprint.Parse(c.IR)
					if err != nil {
						t.Fatalf("candidate IR does not parse: %v", err)
					}
					if id, _ := ir.ID(); id != c.BlueprintID {
						t.Fatalf("id %s, candidate says %s", id, c.BlueprintID)
					}
					if seen[c.BlueprintID] {
						t.Fatalf("candidate %s twice", c.BlueprintID)
					}
					seen[c.BlueprintID] = true
					if c.PredictedGain != nil {
						t.Fatalf("a predicted gain without a predictor")
					}
				}
			})
		}
	}
}

func TestSearchNoCandidate(t *testing.T) {
	cases := []struct {
		name   string
		host   blueprint.Host
		budget blueprint.Budget
	}{
		{"budget below every template", blueprint.Host{Kind: blueprint.HostLinear, In: 512, Out: 512}, blueprint.Budget{MaxParams: 10}},
		{"flops below every template", blueprint.Host{Kind: blueprint.HostConv2d, In: 64, Out: 64, Kernel: 3, Stride: 1, Padding: 1}, blueprint.Budget{MaxFLOPs: 100}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ans, err := Search(Request{Host: tc.host, Budget: tc.budget}, nil, "")
			if err != nil {
				t.Fatal(err)
			}
			if len(ans.Candidates) != 0 || ans.Note == "" {
				t.Fatalf("want no candidate and a note, got %d candidates, note %q", len(ans.Candidates), ans.Note)
			}
		})
	}
}

func TestSearchPriorPrefersTemplateAtLargestSize(t *testing.T) {
	host := testHosts["linear"]
	// residual_mlp width w on 64->64: 64w + w + 64w + 64 params; 5000 fits w = 37.
	ans, err := Search(Request{Host: host, Budget: blueprint.Budget{MaxParams: 5000}, Prefer: []string{"residual_mlp"}, Seed: 1}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	c := ans.Candidates[0]
	if c.Template != "residual_mlp" {
		t.Fatalf("best is %s, want the preferred residual_mlp", c.Template)
	}
	if c.ParamCount > 5000 || c.ParamCount < 4000 {
		t.Fatalf("best has %d params: want the largest residual_mlp within 5000 found", c.ParamCount)
	}
}

func TestSearchHistorySeedsAndPrior(t *testing.T) {
	host := testHosts["linear"]
	hist := []Trial{
		{Run: "a", Template: "lowrank", Params: blueprint.Params{"rank": int64(6)}, Host: host, Gain: 0.05},
		{Run: "b", Template: "residual_mlp", Params: blueprint.Params{"width": int64(8)}, Host: host, Gain: -0.01},
		{Run: "c", Template: "norm_mlp", Params: blueprint.Params{"width": int64(4)}, Host: blueprint.Host{Kind: blueprint.HostConv2d, In: 3, Out: 3, Kernel: 3, Stride: 1}, Gain: 0.9},
	}
	ans, err := Search(Request{Host: host, Budget: blueprint.Budget{MaxParams: 5000}, History: hist, Prefer: []string{"residual_mlp"}}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if ans.HistorySeeds != 1 {
		t.Fatalf("history seeds %d, want 1 (the paying lowrank on a linear layout; the conv trial is another layout)", ans.HistorySeeds)
	}
	if c := ans.Candidates[0]; c.Template != "lowrank" || c.PriorGain == nil || *c.PriorGain != 0.05 {
		t.Fatalf("best %s prior %v: want lowrank at its measured 0.05", c.Template, c.PriorGain)
	}
}

func TestSearchReproducibleUnderCap(t *testing.T) {
	req := Request{Host: testHosts["conv2d"], Budget: blueprint.Budget{MaxParams: 20000}, Seed: 3, Evaluations: 64, TimeBudgetMS: 100}
	a, err := Search(req, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Search(req, nil, "")
	if len(a.Candidates) != len(b.Candidates) {
		t.Fatal("different lengths")
	}
	for i := range a.Candidates {
		if a.Candidates[i].BlueprintID != b.Candidates[i].BlueprintID {
			t.Fatalf("candidate %d differs between two searches of one seed", i)
		}
	}
}

func TestSearchUsesPredictor(t *testing.T) {
	host := testHosts["linear"]
	// Gain falls with size on this synthetic history: the predictor must
	// put small blueprints first, the prior would put the largest first.
	var hist []Trial
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 60 {
		w := int64(1 + rng.IntN(64))
		ir, err := blueprint.Instantiate("residual_mlp", blueprint.Params{"width": w}, host)
		if err != nil {
			t.Fatal(err)
		}
		hist = append(hist, Trial{Run: fmt.Sprintf("r%d", i%6), Template: "residual_mlp", Params: ir.Params, Host: host,
			ParamCount: ir.ParamCount, FLOPsPerSample: ir.FLOPsPerSample, Gain: 0.1 - 0.01*float64(w)/4})
	}
	p, err := Fit(hist)
	if err != nil {
		t.Fatal(err)
	}
	ans, err := Search(Request{Host: host, Budget: blueprint.Budget{MaxParams: 5000}, Prefer: []string{"residual_mlp"}}, p, "fitted")
	if err != nil {
		t.Fatal(err)
	}
	if ans.RankedBy != RankedByPredictor {
		t.Fatalf("ranked by %s", ans.RankedBy)
	}
	for i := 1; i < len(ans.Candidates); i++ {
		if *ans.Candidates[i].PredictedGain > *ans.Candidates[i-1].PredictedGain {
			t.Fatalf("candidates not in order of predicted gain: %v then %v", *ans.Candidates[i-1].PredictedGain, *ans.Candidates[i].PredictedGain)
		}
	}
	if ans.Candidates[0].ParamCount > 2000 {
		t.Fatalf("best has %d params; the predictor says small pays", ans.Candidates[0].ParamCount)
	}
}

func TestParseRequest(t *testing.T) {
	ok := `{"host":{"kind":"linear","in":8,"out":4},"budget":{"max_params":500},"signals":{"grad_norm":0.5},` +
		`"history":[{"run":"r","template":"lowrank","params":{"rank":2},"host":{"kind":"linear","in":8,"out":4},"param_count":24,"flops_per_sample":48,"gain":0.01}],"count":3,"seed":9}`
	r, err := ParseRequest([]byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	if r.History[0].Params["rank"] != int64(2) || r.Count != 3 || r.Signals["grad_norm"] != 0.5 {
		t.Fatalf("decoded %+v", r)
	}
	bad := []struct{ name, doc string }{
		{"unknown field", `{"host":{"kind":"linear","in":8,"out":4},"bogus":1}`},
		{"unknown signal", `{"host":{"kind":"linear","in":8,"out":4},"signals":{"loss":1}}`},
		{"bad host", `{"host":{"kind":"linear","in":0,"out":4}}`},
		{"negative budget", `{"host":{"kind":"linear","in":8,"out":4},"budget":{"max_params":-1}}`},
		{"count too large", `{"host":{"kind":"linear","in":8,"out":4},"count":65}`},
		{"time budget too long", `{"host":{"kind":"linear","in":8,"out":4},"time_budget_ms":101}`},
		{"duplicate key", `{"host":{"kind":"linear","in":8,"out":4},"count":1,"count":2}`},
		{"float param", `{"host":{"kind":"linear","in":8,"out":4},"history":[{"run":"r","template":"lowrank","params":{"rank":2.5},"host":{"kind":"linear","in":8,"out":4},"gain":0}]}`},
		{"trailing data", `{"host":{"kind":"linear","in":8,"out":4}} {}`},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseRequest([]byte(tc.doc)); !errors.Is(err, ErrRequest) {
				t.Fatalf("err = %v, want ErrRequest", err)
			}
		})
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"host":{"kind":"linear","in":8,"out":4},"budget":{"max_params":500}}`))
	f.Add([]byte(`{"host":{"kind":"conv2d","in":3,"out":8,"kernel":3,"stride":1,"padding":1},"signals":{"dead_frac":0.1},"count":2,"evaluations":16}`))
	f.Add([]byte(`{"host":{"kind":"residual","dim":16},"history":[{"run":"r","template":"residual_mlp","params":{"width":4},"host":{"kind":"residual","dim":16},"gain":0.2}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRequest(data)
		if err != nil {
			if !errors.Is(err, ErrRequest) {
				t.Fatalf("error %v does not wrap ErrRequest", err)
			}
			return
		}
		r.Evaluations = min(r.evaluations(), 32)
		ans, err := Search(r, nil, "")
		if err != nil {
			t.Fatalf("a parsed request failed to search: %v", err)
		}
		for _, c := range ans.Candidates {
			if err := blueprint.Check(c.Blueprint(), r.Host, r.Budget); err != nil {
				t.Fatalf("candidate outside the checker: %v", err)
			}
		}
		if _, err := json.Marshal(ans); err != nil {
			t.Fatal(err)
		}
	})
}

func BenchmarkSearch(b *testing.B) {
	req := Request{Host: testHosts["conv2d"], Budget: blueprint.Budget{MaxParams: 20000}, Seed: 3}
	for b.Loop() {
		if _, err := Search(req, nil, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// TestSearchMinParams checks the floor: with min_params no candidate is
// smaller, while the same search without it returns smaller ones (the
// control), and a floor above the budget is refused.
func TestSearchMinParams(t *testing.T) {
	host := testHosts["linear"]
	budget := blueprint.Budget{MaxParams: 5000}
	smallest := func(req Request) int64 {
		t.Helper()
		ans, err := Search(req, nil, "")
		if err != nil {
			t.Fatal(err)
		}
		if len(ans.Candidates) == 0 {
			t.Fatalf("no candidate: %s", ans.Note)
		}
		least := ans.Candidates[0].ParamCount
		for _, c := range ans.Candidates {
			least = min(least, c.ParamCount)
		}
		return least
	}
	base := Request{Host: host, Budget: budget, Seed: 7, Count: 16}
	free := smallest(base)
	floor := free + 1
	base.MinParams = floor
	if got := smallest(base); got < floor {
		t.Fatalf("smallest candidate %d params, floor %d", got, floor)
	}
	for _, tc := range []struct {
		min     int64
		refused bool
	}{{10, false}, {11, true}, {-1, true}} {
		r := Request{Host: host, Budget: blueprint.Budget{MaxParams: 10}, MinParams: tc.min}
		err := r.Validate()
		if refused := err != nil && strings.Contains(err.Error(), "min_params"); refused != tc.refused {
			t.Errorf("min_params %d: error %v, want refused %v", tc.min, err, tc.refused)
		}
	}
}
