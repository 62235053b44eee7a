package blueprint_test

import (
	"testing"

	"github.com/esper-morph/esper/blueprint"
)

// A block host (any (*, In) -> (*, Out) module) takes every template a linear
// host takes, with the same shapes and costs.
func TestBlockHostActsLikeLinear(t *testing.T) {
	linear := blueprint.Host{Kind: blueprint.HostLinear, In: 64, Out: 10}
	block := blueprint.Host{Kind: blueprint.HostBlock, In: 64, Out: 10}
	if err := block.Validate(); err != nil {
		t.Fatalf("block host: %v", err)
	}
	cases := []struct {
		template string
		params   map[string]any
	}{
		{"residual_mlp", map[string]any{"width": 16}},
		{"lowrank", map[string]any{"rank": 4}},
		{"linear", nil},
		{"bottleneck", nil},
		{"norm_mlp", nil},
	}
	for _, tc := range cases {
		t.Run(tc.template, func(t *testing.T) {
			want, err := blueprint.Instantiate(tc.template, tc.params, linear)
			if err != nil {
				t.Fatalf("linear: %v", err)
			}
			got, err := blueprint.Instantiate(tc.template, tc.params, block)
			if err != nil {
				t.Fatalf("block: %v", err)
			}
			if got.ParamCount != want.ParamCount || got.FLOPsPerSample != want.FLOPsPerSample {
				t.Fatalf("block costs %d params / %d flops, linear %d / %d",
					got.ParamCount, got.FLOPsPerSample, want.ParamCount, want.FLOPsPerSample)
			}
		})
	}
	bad := blueprint.Host{Kind: blueprint.HostBlock, In: 64}
	if err := bad.Validate(); err == nil {
		t.Fatal("block host without out was accepted")
	}
}
