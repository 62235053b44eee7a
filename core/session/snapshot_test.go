package session_test

import (
	"encoding/json"
	"fmt"
	"github.com/esper-morph/esper/blueprint"
	"math"
	"strings"
	"sync"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// resumeConfig grows often: random placement, patience 1, no cooldown.
func resumeConfig() session.Config {
	cfg := baseConfig()
	cfg.Layers = append(cfg.Layers, session.LayerConfig{Name: "conv", Host: blueprint.Host{Kind: "conv2d", In: 4, Out: 4, Kernel: 3, Padding: 1}})
	cfg.Policy = "random"
	cfg.Schedule = "cosine"
	cfg.TrainSteps, cfg.BlendSteps = 10, 20
	cfg.Controller = tamiyo.Config{Patience: 1, Seed: 11, Params: map[string]any{"width": 4}}
	zero := 0
	cfg.Governor = tamiyo.GovernorConfig{MaxConcurrent: 3, CooldownEpochs: &zero}
	cfg.Breaker.Failures = 2
	return cfg
}

// drive plays steps [from, to) of a fixed script and returns everything the
// session said, one line per call.
func drive(t testing.TB, s *session.Session, from, to int) []string {
	t.Helper()
	var out []string
	layers := s.Layers()
	alphas := make([]float32, layers*s.Slots())
	buf := make([]float32, nissa.Len(layers))
	for i := from; i < to; i++ {
		for k := range buf {
			buf[k] = float32(math.Sin(float64(i*7+k))) + 1
		}
		buf[1] = 0
		if i%9 == 4 {
			buf[nissa.Index(1, nissa.EffRank)] = float32(math.NaN())
		}
		n, err := s.Step(1, buf, alphas)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		out = append(out, fmt.Sprintf("step %d: %d %v", i, n, alphas))
		if n > 0 {
			out = append(out, mustJSON(t, events(t, s)))
		}
		if i%37 == 20 {
			evs, err := s.ReportFailure(i%3, 0, session.FailureNonfinite, "nan")
			out = append(out, fmt.Sprintf("failure %d: %s %v", i, mustJSON(t, evs), errcode.Of(err)))
		}
		if i%20 == 19 {
			res := endEpoch(t, s, metrics(i/20, 1-0.0001*float64(i)))
			out = append(out, mustJSON(t, res))
		}
	}
	return out
}

func TestSnapshotResumesIdentically(t *testing.T) {
	a := newSession(t, resumeConfig())
	drive(t, a, 0, 97)
	blending := false
	seeds, _ := a.Seeds()
	for _, sd := range seeds {
		blending = blending || sd.State == lifecycle.Blending && sd.Alpha > 0 && sd.Alpha < 1
	}
	if !blending {
		t.Fatalf("the script must checkpoint in the middle of BLENDING: %s", mustJSON(t, seeds))
	}
	snap, err := a.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	b := newSession(t, resumeConfig())
	drive(t, b, 0, 13) // b has a history of its own that Restore must replace
	if err := b.Restore(snap); err != nil {
		t.Fatal(err)
	}
	again, err := b.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(snap) {
		t.Fatalf("snapshot of a restored session differs:\n%s\n%s", snap, again)
	}
	wantOut, gotOut := drive(t, a, 97, 400), drive(t, b, 97, 400)
	for i := range wantOut {
		if i >= len(gotOut) || gotOut[i] != wantOut[i] {
			t.Fatalf("line %d diverged:\n%s\n%s", i, wantOut[i], gotOut[min(i, len(gotOut)-1)])
		}
	}
	sa, _ := a.Snapshot()
	sb, _ := b.Snapshot()
	if string(sa) != string(sb) {
		t.Fatal("final snapshots differ")
	}
	st, _ := a.Stats()
	if st.Counters.Germinations < 3 || st.Counters.Failures == 0 {
		t.Fatalf("the script exercises too little: %+v", st.Counters)
	}
}

func TestRestoreRejects(t *testing.T) {
	s := newSession(t, resumeConfig())
	drive(t, s, 0, 70)
	good, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	before := good
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	seed0 := func(m map[string]any) map[string]any { return m["seeds"].([]any)[0].(map[string]any) }
	cases := []struct {
		name string
		doc  []byte
		msg  string
	}{
		{"garbage", []byte(`{`), "bad snapshot"},
		{"version", edit(func(m map[string]any) { m["version"] = 2 }), "version 2"},
		{"unknown field", edit(func(m map[string]any) { m["extra"] = 1 }), "unknown field"},
		{"other width", edit(func(m map[string]any) {
			m["config"].(map[string]any)["layers"].([]any)[0].(map[string]any)["out"] = 33
		}), "layer 0 (fc1) has host linear(in 16, out 33) in the snapshot, linear(in 16, out 32) in this session"},
		{"other conv geometry", edit(func(m map[string]any) {
			m["config"].(map[string]any)["layers"].([]any)[2].(map[string]any)["kernel"] = 5
		}), "layer 2 (conv) has host conv2d(in 4, out 4, kernel 5, stride 1, padding 1) in the snapshot, " +
			"conv2d(in 4, out 4, kernel 3, stride 1, padding 1) in this session"},
		{"renamed layer", edit(func(m map[string]any) {
			m["config"].(map[string]any)["layers"].([]any)[1].(map[string]any)["name"] = "head"
		}), `layer 1 is "head" in the snapshot, "fc2" in this session`},
		{"fewer layers", edit(func(m map[string]any) {
			m["config"].(map[string]any)["layers"] = m["config"].(map[string]any)["layers"].([]any)[:2]
		}), "the snapshot is for 2 layers [fc1 fc2], this session has 3 layers [fc1 fc2 conv]"},
		{"slots", edit(func(m map[string]any) { m["config"].(map[string]any)["slots_per_layer"] = 3 }),
			"the snapshot has 3 slots per layer, this session 2"},
		{"seed count", edit(func(m map[string]any) { m["seeds"] = m["seeds"].([]any)[1:] }), "seeds and"},
		{"seed order", edit(func(m map[string]any) { seed0(m)["slot"] = 1 }), "seeds[0] is seed 0/1"},
		{"bad state", edit(func(m map[string]any) { seed0(m)["state"] = "ALIVE" }), "unknown state"},
		{"alpha", edit(func(m map[string]any) { seed0(m)["alpha"] = 3 }), "alpha 3"},
		{"negative step", edit(func(m map[string]any) { m["step"] = -1 }), "step -1"},
		{"signals", edit(func(m map[string]any) { m["signals"].(map[string]any)["window"] = 3 }), "signals"},
		{"controller rng", edit(func(m map[string]any) { m["controller"].(map[string]any)["rng"] = "AAAA" }), "rng"},
		{"counters", edit(func(m map[string]any) { m["counters"].(map[string]any)["prunes"] = -1 }), "negative counters"},
		{"config", edit(func(m map[string]any) { m["config"].(map[string]any)["train_steps"] = -4 }), "train_steps -4"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Restore(tc.doc)
			if errcode.Of(err) != errcode.Invalid || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v (code %v)", err, errcode.Of(err))
			}
		})
	}
	after, _ := s.Snapshot()
	if string(after) != string(before) {
		t.Fatal("a refused restore changed the session")
	}
}

func TestConcurrentUse(t *testing.T) {
	s := newSession(t, resumeConfig())
	var wg sync.WaitGroup
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			alphas := make([]float32, s.Layers()*s.Slots())
			buf := signals(s.Layers(), 1, 0)
			for i := 0; i < 300; i++ {
				if _, err := s.Step(1, buf, alphas); err != nil {
					t.Error(err)
					return
				}
				switch (g + i) % 50 {
				case 0:
					if _, err := s.EndEpoch(tamiyo.Metrics{ValLoss: nissa.Measure(1)}); err != nil {
						t.Error(err)
					}
				case 10:
					if _, err := s.Snapshot(); err != nil {
						t.Error(err)
					}
				case 20:
					if _, err := s.Stats(); err != nil {
						t.Error(err)
					}
				case 30:
					if _, err := s.Seeds(); err != nil {
						t.Error(err)
					}
				case 40:
					if _, err := s.Events(); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Step != 1800 {
		t.Fatalf("step %d after 1800 steps", st.Step)
	}
}

func FuzzRestore(f *testing.F) {
	s, err := session.New(resumeConfig())
	if err != nil {
		f.Fatal(err)
	}
	drive(f, s, 0, 70)
	snap, err := s.Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(snap)
	f.Add([]byte(`{"version": 1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		target, err := session.New(resumeConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer target.Close()
		before, _ := target.Snapshot()
		if err := target.Restore(b); err != nil {
			if c := errcode.Of(err); c != errcode.Invalid && c != errcode.NotFound {
				t.Fatalf("code %v: %v", c, err)
			}
			if after, _ := target.Snapshot(); string(after) != string(before) {
				t.Fatal("a refused restore changed the session")
			}
			return
		}
		// A restored session must keep working.
		drive(t, target, 70, 75)
	})
}

func FuzzParseBlueprint(f *testing.F) {
	f.Add([]byte(`{"template": "residual_mlp", "params": {"width": 4, "activation": "gelu"}}`))
	f.Add([]byte(`{"template": "lowrank"}`))
	f.Add([]byte(`{"version": 1, "host": {"kind": "linear", "in": 16, "out": 32}, "ops": [{"id": "fc", "op": "linear", "inputs": ["x"],
		"attrs": {"in": 16, "out": 32, "bias": false, "init": "zero"}}], "output": "fc"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := session.New(baseConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		evs, err := s.GerminateSpec(0, 0, b)
		if err != nil {
			if c := errcode.Of(err); c != errcode.Invalid && c != errcode.NotFound && c != errcode.Budget {
				t.Fatalf("code %v: %v", c, err)
			}
			return
		}
		if len(evs) != 1 || evs[0].To != lifecycle.Germinated || len(evs[0].Blueprint) == 0 {
			t.Fatalf("events %+v", evs)
		}
	})
}
