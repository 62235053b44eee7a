package tamiyo_test

import (
	"errors"
	"math"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func TestParseKind(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want tamiyo.Kind
		ok   bool
	}{
		{"heuristic", tamiyo.Heuristic, true},
		{"Random", tamiyo.Random, true},
		{"manual", tamiyo.Manual, true},
		{"none", tamiyo.Manual, true},
		{"learned", tamiyo.Learned, true},
		{"PPO", tamiyo.PPO, true},
		{"bandit", 0, false},
		{"", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := tamiyo.ParseKind(tc.in)
			if tc.ok != (err == nil) || got != tc.want {
				t.Fatalf("ParseKind = %v, %v", got, err)
			}
			if err != nil && errcode.Of(err) != errcode.Invalid {
				t.Fatalf("code %v", errcode.Of(err))
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c, err := tamiyo.Config{}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	g := c.Governor
	if c.Patience != 3 || c.Threshold != 0.01 || c.HoldingEpochs != 1 || c.Template != "residual_mlp" ||
		c.Params["width"] != int64(32) || g.MaxConcurrent != 1 || *g.CooldownEpochs != 2 || g.LossWindow != 20 ||
		g.LossFactor != 3 || g.MinLossSamples != 5 || g.MaxParams != 0 || c.SaturateAfter != 2 {
		t.Fatalf("defaults %+v %+v", c, g)
	}
	zero, err := tamiyo.GovernorConfig{CooldownEpochs: intp(0)}.WithDefaults()
	if err != nil || *zero.CooldownEpochs != 0 {
		t.Fatalf("explicit zero cooldown: %v %v", zero.CooldownEpochs, err)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		cfg  tamiyo.Config
		code errcode.Code
	}{
		{"patience", tamiyo.Config{Patience: -1}, errcode.Invalid},
		{"patience huge", tamiyo.Config{Patience: 5000}, errcode.Invalid},
		{"threshold", tamiyo.Config{Threshold: 2}, errcode.Invalid},
		{"threshold NaN", tamiyo.Config{Threshold: math.NaN()}, errcode.Invalid},
		{"prune below inf", tamiyo.Config{PruneBelow: math.Inf(1)}, errcode.Invalid},
		{"holding", tamiyo.Config{HoldingEpochs: -2}, errcode.Invalid},
		{"epochs", tamiyo.Config{Epochs: -1}, errcode.Invalid},
		{"epochs huge", tamiyo.Config{Epochs: tamiyo.MaxEpochs + 1}, errcode.Invalid},
		{"saturate after", tamiyo.Config{SaturateAfter: -1}, errcode.Invalid},
		{"saturate after huge", tamiyo.Config{SaturateAfter: tamiyo.MaxSaturateAfter + 1}, errcode.Invalid},
		{"template", tamiyo.Config{Template: "nope"}, errcode.Invalid},
		{"params", tamiyo.Config{Params: blueprint.Params{"width": 0}}, errcode.Invalid},
		{"unknown param", tamiyo.Config{Params: blueprint.Params{"depth": 3}}, errcode.Invalid},
		{"kind", tamiyo.Config{Kind: 9}, errcode.Invalid},
		{"ppo runtime", tamiyo.Config{PPORuntime: "tflite"}, errcode.Invalid},
		{"max params", tamiyo.Config{Governor: tamiyo.GovernorConfig{MaxParams: -1}}, errcode.Invalid},
		{"max concurrent", tamiyo.Config{Governor: tamiyo.GovernorConfig{MaxConcurrent: -1}}, errcode.Invalid},
		{"cooldown", tamiyo.Config{Governor: tamiyo.GovernorConfig{CooldownEpochs: intp(-1)}}, errcode.Invalid},
		{"loss factor", tamiyo.Config{Governor: tamiyo.GovernorConfig{LossFactor: 0.5}}, errcode.Invalid},
		{"loss factor inf", tamiyo.Config{Governor: tamiyo.GovernorConfig{LossFactor: math.Inf(1)}}, errcode.Invalid},
		{"loss window", tamiyo.Config{Governor: tamiyo.GovernorConfig{LossWindow: 1 << 20}}, errcode.Invalid},
		{"min samples", tamiyo.Config{Governor: tamiyo.GovernorConfig{LossWindow: 4, MinLossSamples: 5}}, errcode.Invalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.WithDefaults()
			if !errors.Is(err, tamiyo.ErrConfig) || errcode.Of(err) != tc.code {
				t.Fatalf("err = %v (code %v)", err, errcode.Of(err))
			}
		})
	}
	for _, rt := range []string{"", "native", "onnx"} {
		if _, err := (tamiyo.Config{PPORuntime: rt}).WithDefaults(); err != nil {
			t.Fatalf("ppo_runtime %q: %v", rt, err)
		}
	}
	if _, err := tamiyo.New(tamiyo.Config{}, []blueprint.Host{{Kind: "mystery"}}); !errors.Is(err, tamiyo.ErrConfig) {
		t.Fatalf("bad host: %v", err)
	}
}
