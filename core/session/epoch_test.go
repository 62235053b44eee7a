package session_test

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func heuristicConfig() session.Config {
	cfg := baseConfig()
	cfg.Policy = "heuristic"
	cfg.Controller = tamiyo.Config{Patience: 2, Params: map[string]any{"width": 4}}
	return cfg
}

func endEpoch(t testing.TB, s *session.Session, m tamiyo.Metrics) session.EpochResult {
	t.Helper()
	res, err := s.EndEpoch(m)
	if err != nil {
		t.Fatalf("EndEpoch: %v", err)
	}
	return res
}

func TestHeuristicGrowsJudgesAndFossilizes(t *testing.T) {
	s := newSession(t, heuristicConfig())
	alphas := make([]float32, 4)
	buf := signals(2, 1, 0)
	buf[nissa.Index(0, nissa.GradNorm)] = 1
	buf[nissa.Index(1, nissa.GradNorm)] = 3
	if _, err := s.Step(1, buf, alphas); err != nil {
		t.Fatal(err)
	}
	for e, v := range []float64{1, 0.999} {
		res := endEpoch(t, s, metrics(e, v))
		if len(res.Decisions) != 1 || res.Decisions[0].Op != tamiyo.Wait || len(res.Events) != 0 {
			t.Fatalf("epoch %d: %s", e, mustJSON(t, res))
		}
	}
	res := endEpoch(t, s, metrics(2, 0.999))
	d := res.Decisions[0]
	if d.Op != tamiyo.Germinate || d.Layer != 1 || d.Slot != 0 || !d.Applied || d.Template != "residual_mlp" {
		t.Fatalf("growth decision %s", mustJSON(t, res))
	}
	if len(res.Events) != 1 || res.Events[0].To != lifecycle.Germinated || res.Events[0].Reason != d.Reason || res.Events[0].Epoch != 2 {
		t.Fatalf("growth events %s", mustJSON(t, res.Events))
	}
	step(t, s, 1+10+4)
	if got := transitions(events(t, s)); len(got) != 3 || !strings.HasSuffix(got[2], "BLENDING->HOLDING@16") {
		t.Fatalf("lifecycle %v", got)
	}
	res = endEpoch(t, s, metrics(3, 0.98, tamiyo.Contribution{Layer: 1, Slot: 0, DeltaLoss: 0.05}))
	if res.Decisions[0].Op != tamiyo.Fossilize || !res.Decisions[0].Applied || res.Events[0].To != lifecycle.Fossilized {
		t.Fatalf("judgement %s", mustJSON(t, res))
	}
	if w := res.Decisions[1]; w.Op != tamiyo.Wait || !strings.Contains(w.Reason, "watching for a plateau") {
		t.Fatalf("after fossilizing %s", mustJSON(t, w))
	}
	st, _ := s.Stats()
	if st.Counters.Germinations != 1 || st.Counters.Fossilizations != 1 || st.Counters.Decisions != 5 || st.Epoch != 4 {
		t.Fatalf("stats %+v", st.Counters)
	}
	// The JSON result carries op names, states and reasons.
	var doc map[string]any
	if err := json.Unmarshal([]byte(mustJSON(t, res)), &doc); err != nil {
		t.Fatal(err)
	}
	first := doc["decisions"].([]any)[0].(map[string]any)
	if first["op"] != "fossilize" || first["applied"] != true || first["reason"] == "" {
		t.Fatalf("decision JSON %v", first)
	}
}

func TestEndEpochErrors(t *testing.T) {
	s := newSession(t, heuristicConfig())
	endEpoch(t, s, metrics(4, 1))
	cases := []struct {
		name string
		m    tamiyo.Metrics
		code errcode.Code
		msg  string
	}{
		{"epoch already ended", metrics(4, 1), errcode.State, "epoch 4 has already ended (the epoch in progress is 5)"},
		{"contribution layer", metrics(5, 1, tamiyo.Contribution{Layer: 9, Slot: 0}), errcode.Invalid, "contributions[0]: session: seed 9/0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.EndEpoch(tc.m)
			if errcode.Of(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	res := endEpoch(t, s, tamiyo.Metrics{ValLoss: nissa.Measure(1)})
	if res.Epoch != 5 {
		t.Fatalf("an epoch without a number must follow the last: %d", res.Epoch)
	}
}

func TestEpochRollbackOnTrainLoss(t *testing.T) {
	cfg := heuristicConfig()
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	step(t, s, 12)
	events(t, s)
	m := metrics(0, 1)
	m.TrainLoss = nissa.Measure(math.NaN())
	res := endEpoch(t, s, m)
	if len(res.Decisions) != 1 || res.Decisions[0].Op != tamiyo.Rollback || res.Decisions[0].Layer != 0 {
		t.Fatalf("decisions %s", mustJSON(t, res))
	}
	if got := transitions(res.Events); !reflect.DeepEqual(got, []string{"0/0 BLENDING->ROLLED_BACK@12", "0/0 ROLLED_BACK->EMBARGOED@12"}) {
		t.Fatalf("events %v", got)
	}
}

func TestLogWriter(t *testing.T) {
	var out bytes.Buffer
	cfg := heuristicConfig()
	cfg.LogSignalsEvery = 2
	s := newSession(t, cfg, session.WithLog(&out))
	alphas := make([]float32, 4)
	for i := 0; i < 4; i++ {
		if _, err := s.Step(1, signals(2, 1, 0), alphas); err != nil {
			t.Fatal(err)
		}
	}
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	endEpoch(t, s, metrics(0, 1))
	kinds := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var rec struct {
			Kind string          `json:"kind"`
			Data json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		kinds[rec.Kind]++
	}
	if kinds["signals"] != 2 || kinds["event"] != 1 || kinds["metrics"] != 1 || kinds["decision"] != 1 {
		t.Fatalf("log kinds %v:\n%s", kinds, out.String())
	}
}

func TestLogPath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "growth.jsonl")
	cfg := baseConfig()
	cfg.LogPath = path
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"kind":"event"`) || !strings.Contains(string(b), `"to":"GERMINATED"`) {
		t.Fatalf("log file %s", b)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, os.ErrClosed }

func TestLogErrorIsReported(t *testing.T) {
	s := newSession(t, baseConfig(), session.WithLog(failingWriter{}))
	germinate(t, s, 0, 0, `{"template": "linear"}`)
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.LogError, "file already closed") {
		t.Fatalf("log error %q", st.LogError)
	}
}
