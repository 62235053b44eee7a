package session_test

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/session"
)

func TestConfigDefaults(t *testing.T) {
	cfg, err := session.ParseConfig([]byte(`{"layers": [{"name": "fc", "kind": "linear", "in": 4, "out": 4},
		{"name": "conv", "kind": "conv2d", "in": 3, "out": 8, "kernel": 3, "padding": 1}]}`))
	if err != nil {
		t.Fatal(err)
	}
	full, err := cfg.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if full.SlotsPerLayer != 1 || full.TrainSteps != 100 || full.BlendSteps != 100 || *full.EmbargoSteps != 100 ||
		full.Schedule != "linear" || full.Policy != "heuristic" || full.Breaker.Failures != 3 || !*full.AutoAdvance ||
		full.Signals.Window != 64 || full.Signals.EWMA != 0.1 || full.GrowthLogMax != 10000 || full.Layers[1].Stride != 1 ||
		full.Controller.Patience != 3 || full.Controller.Template != "residual_mlp" || full.Governor.MaxConcurrent != 1 ||
		*full.Governor.CooldownEpochs != 2 {
		t.Fatalf("defaults: %s", mustJSON(t, full))
	}
	again, err := session.ParseConfig([]byte(mustJSON(t, full)))
	if err != nil {
		t.Fatalf("defaults do not re-parse: %v", err)
	}
	if _, err := again.WithDefaults(); err != nil {
		t.Fatalf("defaults do not re-validate: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	const fc = `{"name": "fc", "kind": "linear", "in": 4, "out": 4}`
	cases := []struct {
		name, doc, msg string
	}{
		{"not JSON", `{`, "unexpected end of document"},
		{"trailing", `{"layers": [` + fc + `]} x`, "trailing data"},
		{"unknown field", `{"layers": [` + fc + `], "slots": 2}`, `unknown field "slots"`},
		{"no layers", `{"layers": []}`, "0 layers"},
		{"nameless", `{"layers": [{"kind": "linear", "in": 4, "out": 4}]}`, `name ""`},
		{"duplicate name", `{"layers": [` + fc + `,` + fc + `]}`, `name "fc" repeats layers[0]`},
		{"bad kind", `{"layers": [{"name": "x", "kind": "lstm", "in": 4, "out": 4}]}`, `kind "lstm"`},
		{"missing out", `{"layers": [{"name": "x", "kind": "linear", "in": 4}]}`, "out = 0"},
		{"conv without kernel", `{"layers": [{"name": "x", "kind": "conv2d", "in": 4, "out": 4}]}`, "kernel = 0"},
		{"pair without mid", `{"layers": [{"name": "x", "kind": "conv2d_pair", "in": 4, "out": 4, "kernel": 3,
			"consumer_kernel": 3, "activation": "relu"}]}`, "mid = 0"},
		{"pair with batchnorm", `{"layers": [{"name": "x", "kind": "conv2d_pair", "in": 4, "mid": 4, "out": 4,
			"kernel": 3, "consumer_kernel": 3, "activation": "batchnorm"}]}`, `activation "batchnorm" is not one of`},
		{"negative params", `{"layers": [{"name": "x", "kind": "linear", "in": 4, "out": 4, "params": -1}]}`, "params -1"},
		{"slots", `{"layers": [` + fc + `], "slots_per_layer": 65}`, "slots_per_layer 65"},
		{"train steps", `{"layers": [` + fc + `], "train_steps": -1}`, "train_steps -1"},
		{"blend steps", `{"layers": [` + fc + `], "blend_steps": -5}`, "blend_steps -5"},
		{"embargo", `{"layers": [` + fc + `], "embargo_steps": -1}`, "embargo_steps -1"},
		{"schedule", `{"layers": [` + fc + `], "schedule": "step"}`, `schedule "step"`},
		{"policy", `{"layers": [` + fc + `], "policy": "bandit"}`, `policy "bandit"`},
		{"ppo without a model", `{"layers": [` + fc + `], "policy": "ppo"}`, "esper simic ppo train"},
		{"learned without a model", `{"layers": [` + fc + `], "policy": "learned"}`, "esper simic train"},
		{"template", `{"layers": [` + fc + `], "controller": {"template": "mystery"}}`, "mystery"},
		{"template params", `{"layers": [` + fc + `], "controller": {"params": {"width": 0}}}`, "width"},
		{"governor", `{"layers": [` + fc + `], "governor": {"loss_factor": 0.5}}`, "loss_factor 0.5"},
		{"breaker", `{"layers": [` + fc + `], "breaker": {"failures": -2}}`, "breaker failures -2"},
		{"signals", `{"layers": [` + fc + `], "signals": {"window": 1}}`, "window 1"},
		{"growth log", `{"layers": [` + fc + `], "growth_log_max": -1}`, "growth_log_max -1"},
		{"log every", `{"layers": [` + fc + `], "log_signals_every": -1}`, "log_signals_every -1"},
		{"wrong type", `{"layers": [` + fc + `], "train_steps": "ten"}`, "train_steps"},
		{"duplicate key", `{"layers": [` + fc + `], "train_steps": 5, "train_steps": 500}`, `duplicate object key "train_steps"`},
		{"duplicate nested key", `{"layers": [{"name": "fc", "name": "gc", "kind": "linear", "in": 4, "out": 4}]}`, `duplicate object key "name"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := session.ParseConfig([]byte(tc.doc))
			if err == nil {
				_, err = session.New(cfg)
			}
			if !errors.Is(err, session.ErrConfig) || errcode.Of(err) != errcode.Invalid {
				t.Fatalf("err = %v (code %v)", err, errcode.Of(err))
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

func TestConfigLogPathError(t *testing.T) {
	cfg := baseConfig()
	cfg.LogPath = t.TempDir() + "/missing/dir/log.jsonl"
	if _, err := session.New(cfg); errcode.Of(err) != errcode.IO || !strings.Contains(err.Error(), "open log") {
		t.Fatalf("err = %v", err)
	}
}

// maxNewBytes bounds what New may allocate for any valid config: Nissa's
// buffers (at most 48 MiB, MaxSignalValues) plus 65536 seeds and 4096
// layers' controller state.
const maxNewBytes = 160 << 20

// TestConfigMemoryBounds: configs whose buffers would not fit the bounds
// are refused by validation, before anything is allocated; the largest
// accepted ones allocate within maxNewBytes.
func TestConfigMemoryBounds(t *testing.T) {
	layers := func(n int) []session.LayerConfig {
		out := make([]session.LayerConfig, n)
		for i := range out {
			out[i] = session.LayerConfig{Name: fmt.Sprintf("l%d", i)}
			out[i].Kind, out[i].In, out[i].Out = blueprint.HostLinear, 4, 4
		}
		return out
	}
	cases := []struct {
		name   string
		cfg    session.Config
		refuse string
	}{
		{"max layers x max window", session.Config{Layers: layers(session.MaxLayers), Signals: session.SignalsConfig{Window: 1 << 16}},
			"exceeds 4194304 (48 MiB of buffers)"},
		{"one layer, max window", session.Config{Layers: layers(1), Signals: session.SignalsConfig{Window: 1 << 16}}, ""},
		{"max layers x default window, max slots", session.Config{Layers: layers(session.MaxLayers), SlotsPerLayer: 16}, ""},
		{"max layers x largest window", session.Config{Layers: layers(session.MaxLayers), Signals: session.SignalsConfig{Window: 145}}, ""},
		{"too many layers", session.Config{Layers: layers(session.MaxLayers + 1)}, "4097 layers"},
		{"too many slots", session.Config{Layers: layers(session.MaxLayers), SlotsPerLayer: 17}, "layers x slots <= 65536"},
		{"growth log", session.Config{Layers: layers(1), GrowthLogMax: session.MaxGrowthLog + 1}, "growth_log_max"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			s, err := session.New(tc.cfg)
			runtime.ReadMemStats(&after)
			grown := after.TotalAlloc - before.TotalAlloc
			if tc.refuse != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refuse) {
					t.Fatalf("err = %v, want %q", err, tc.refuse)
				}
				if grown > 4<<20 {
					t.Fatalf("refusing the config allocated %d MiB", grown>>20)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if grown > maxNewBytes {
				t.Fatalf("New allocated %d MiB (limit %d MiB)", grown>>20, maxNewBytes>>20)
			}
			t.Logf("New allocated %.1f MiB", float64(grown)/(1<<20))
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"layers": [{"name": "fc", "kind": "linear", "in": 4, "out": 4}], "slots_per_layer": 2, "policy": "random",
		"controller": {"seed": 3, "params": {"width": 8}}, "governor": {"max_params": 1000, "cooldown_epochs": 0}}`))
	f.Add([]byte(`{"layers": [{"name": "c", "kind": "conv2d", "in": 3, "out": 8, "kernel": 3, "padding": 1, "spatial": [8, 8]}],
		"schedule": "cosine", "embargo_steps": 0, "auto_advance": false}`))
	f.Add([]byte(`{"layers": [{"name": "r", "kind": "residual", "dim": 16}], "breaker": {"failures": 1}}`))
	f.Add([]byte(`{"layers": [{"name": "a", "kind": "linear", "in": 4, "out": 4}, {"name": "b", "kind": "linear", "in": 4, "out": 4}],
		"slots_per_layer": 64, "signals": {"window": 65536}, "growth_log_max": 1048576, "governor": {"loss_window": 65536}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		cfg, err := session.ParseConfig(b)
		if err != nil {
			if errcode.Of(err) != errcode.Invalid {
				t.Fatalf("code %v: %v", errcode.Of(err), err)
			}
			return
		}
		if cfg.LogPath != "" {
			return // touch no files
		}
		// Whatever the validation accepts, New allocates within the
		// documented bound: no size check here, the config's own limits
		// (layers, slots, window x layers) must keep memory bounded.
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s, err := session.New(cfg)
		runtime.ReadMemStats(&after)
		if grown := after.TotalAlloc - before.TotalAlloc; grown > maxNewBytes {
			t.Fatalf("New allocated %d MiB for a config it accepted (limit %d MiB)", grown>>20, maxNewBytes>>20)
		}
		if err != nil {
			if c := errcode.Of(err); c != errcode.Invalid && c != errcode.NotFound {
				t.Fatalf("New code %v: %v", c, err)
			}
			return
		}
		defer s.Close()
		alphas := make([]float32, s.Layers()*s.Slots())
		if _, err := s.Step(1, nil, alphas); err != nil {
			t.Fatalf("Step on a valid config: %v", err)
		}
		if _, err := s.Snapshot(); err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
	})
}

// A conv pair layer takes the conv defaults (stride 1, consumer stride 1)
// and its seeds come from Karn's widen template.
func TestConfigConvPair(t *testing.T) {
	cfg, err := session.ParseConfig([]byte(`{"layers": [{"name": "features.0", "kind": "conv2d_pair", "in": 3,
		"mid": 8, "out": 16, "kernel": 3, "padding": 1, "consumer_kernel": 3, "consumer_padding": 1, "activation": "relu"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	full, err := cfg.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	l := full.Layers[0]
	if l.Stride != 1 || l.ConsumerStride != 1 || l.Mid != 8 || l.Activation != "relu" {
		t.Fatalf("pair layer: %s", mustJSON(t, l))
	}
	if _, err := blueprint.Instantiate("widen", nil, l.Host); err != nil {
		t.Fatalf("widen on the configured pair: %v", err)
	}
}
