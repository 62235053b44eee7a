package blueprint_test

import (
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
)

// zeroLin is a zero-initialised linear 8->8 without bias: its output is
// exactly zero, so ops after it keep a zero output when they map 0 to 0.
const zeroLin = `{"id":"z","op":"linear","inputs":["x"],"attrs":{"in":8,"out":8,"bias":false,"init":"zero"}}`

// TestNewOps checks each op added with the factorised, gated, attention and
// activation families: good IRs are accepted with the counts computed by hand
// (what PyTorch builds, tests_py/test_ops.py), bad shapes and attributes are
// refused naming the op, and an output that can be non-zero at init is
// refused.
func TestNewOps(t *testing.T) {
	lin86 := `{"kind":"linear","in":8,"out":6}`
	lin88 := `{"kind":"linear","in":8,"out":8}`
	tokens := `{"kind":"residual","dim":8}`
	cases := []struct {
		name   string
		host   string
		ops    string
		params int64
		flops  int64
		err    error
		frags  []string
	}{
		// A (3x2) zero, B (2x4): 6 + 8 parameters; 2*8*2 + 2*2*6 FLOPs.
		{"kron", lin86, `{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":6,"in_factor":2,"out_factor":3,"init":"zero"}}`, 14, 56, nil, nil},
		{"kron full", lin86, `{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":6,"in_factor":1,"out_factor":1,"init":"zero"}}`, 1 + 48, 2*8*6 + 2*6, nil, nil},
		{"kron of zero", lin88, zeroLin + `,{"id":"o","op":"kron_linear","inputs":["z"],"attrs":{"in":8,"out":8,"in_factor":4,"out_factor":2}}`, 64 + 2*4 + 4*2, 2*64 + 2*8*4 + 2*4*8, nil, nil},
		{"kron factor", lin86, `{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":6,"in_factor":3,"out_factor":3,"init":"zero"}}`, 0, 0, blueprint.ErrAttr, []string{`op "o" (kron_linear)`, "divisible by in_factor 3"}},
		{"kron out factor", lin86, `{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":6,"in_factor":2,"out_factor":4,"init":"zero"}}`, 0, 0, blueprint.ErrAttr, []string{"out_factor 4"}},
		{"kron missing", lin86, `{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":6,"in_factor":2}}`, 0, 0, blueprint.ErrAttr, []string{`missing attribute "out_factor"`}},
		{"kron width", lin86, `{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":4,"out":6,"in_factor":2,"out_factor":3,"init":"zero"}}`, 0, 0, blueprint.ErrShape, []string{"expects 4 features", "(*, 8)"}},
		{"kron not zero", lin86, `{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":6,"in_factor":2,"out_factor":3}}`, 0, 0, blueprint.ErrNotZeroInit, nil},
		{"kron zero factor", lin86, `{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":6,"in_factor":0,"out_factor":3,"init":"zero"}}`, 0, 0, blueprint.ErrAttr, []string{"in_factor", "an integer >= 1"}},
		{"causal attention", tokens, `{"id":"o","op":"attention","inputs":["x"],"attrs":{"dim":8,"heads":2,"causal":true,"init":"zero"}}`, 4*64 + 4*8, 8*64 + 4*8, nil, nil},
		{"causal type", tokens, `{"id":"o","op":"attention","inputs":["x"],"attrs":{"dim":8,"heads":2,"causal":"yes","init":"zero"}}`, 0, 0, blueprint.ErrAttr, []string{`"causal"`, "true or false"}},
		{"causal on linear", lin86, `{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":8,"out":6,"bias":false,"causal":true,"init":"zero"}}`, 0, 0, blueprint.ErrAttr, []string{`unknown attribute "causal"`}},
		{"attention not zero", tokens, `{"id":"o","op":"attention","inputs":["x"],"attrs":{"dim":8,"heads":2,"causal":true}}`, 0, 0, blueprint.ErrNotZeroInit, nil},
		{"leaky_relu of zero", lin88, zeroLin + `,{"id":"o","op":"leaky_relu","inputs":["z"]}`, 64, 128 + 2*8, nil, nil},
		{"elu of zero", lin88, zeroLin + `,{"id":"o","op":"elu","inputs":["z"]}`, 64, 128 + 4*8, nil, nil},
		{"mish of zero", lin88, zeroLin + `,{"id":"o","op":"mish","inputs":["z"]}`, 64, 128 + 4*8, nil, nil},
		{"hardswish of zero", lin88, zeroLin + `,{"id":"o","op":"hardswish","inputs":["z"]}`, 64, 128 + 4*8, nil, nil},
		{"activation attrs", lin88, zeroLin + `,{"id":"o","op":"mish","inputs":["z"],"attrs":{"slope":1}}`, 0, 0, blueprint.ErrAttr, []string{`unknown attribute "slope"`, "known: none"}},
		{"activation of x", lin88, `{"id":"o","op":"elu","inputs":["x"]}`, 0, 0, blueprint.ErrNotZeroInit, nil},
		// GLU by hand: value * sigmoid(gate) is not zero at init; a zero projection after it is.
		{"glu unprojected", lin88, `{"id":"v","op":"linear","inputs":["x"],"attrs":{"in":8,"out":8,"bias":false}},{"id":"g","op":"linear","inputs":["x"],"attrs":{"in":8,"out":8,"bias":false}},{"id":"s","op":"sigmoid","inputs":["g"]},{"id":"o","op":"mul","inputs":["v","s"]}`, 0, 0, blueprint.ErrNotZeroInit, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ir, err := blueprint.Parse([]byte(`{"version":1,"host":` + tc.host + `,"ops":[` + tc.ops + `],"output":"o"}`))
			if tc.err != nil {
				wantErr(t, err, tc.err, errcode.Invalid, tc.frags...)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ir.ParamCount != tc.params || ir.FLOPsPerSample != tc.flops {
				t.Fatalf("counts = (%d, %d), want (%d, %d)", ir.ParamCount, ir.FLOPsPerSample, tc.params, tc.flops)
			}
		})
	}
}

// TestNewTemplateCounts checks the new templates' counts against sums done by
// hand, op by op.
func TestNewTemplateCounts(t *testing.T) {
	lin := blueprint.Host{Kind: "linear", In: 64, Out: 10}
	conv := blueprint.Host{Kind: "conv2d", In: 16, Out: 32, Kernel: 3, Stride: 2, Padding: 1, Spatial: []int64{8, 8}}
	conv1 := blueprint.Host{Kind: "conv1d", In: 8, Out: 12, Kernel: 5, Stride: 1, Padding: 2}
	cases := []struct {
		name   string
		tmpl   string
		params blueprint.Params
		host   blueprint.Host
		count  int64
		flops  int64
	}{
		// value and gate 64->16 (no bias), silu, mul, proj 16->10.
		{"swiglu", "glu_mlp", blueprint.Params{"width": 16}, lin, 2*64*16 + 16*10 + 10, 2*(2*64*16) + 4*16 + 16 + (2*16*10 + 10)},
		{"glu", "glu_mlp", blueprint.Params{"width": 16, "gate": "sigmoid"}, lin, 2*64*16 + 16*10 + 10, 2*(2*64*16) + 4*16 + 16 + (2*16*10 + 10)},
		{"reglu", "glu_mlp", blueprint.Params{"width": 16, "gate": "relu"}, lin, 2*64*16 + 16*10 + 10, 2*(2*64*16) + 16 + 16 + (2*16*10 + 10)},
		// in_factor 4 (of 64), out_factor 2 (of 10): A 2x4, B 5x16.
		{"kron", "kron_adapter", nil, lin, 2*4 + 5*16, 2*64*5 + 2*4*10},
		// 10 is prime to 3: out_factor 2 again; in_factor 2 (of 64, <= 3).
		{"kron 3", "kron_adapter", blueprint.Params{"factor": 3}, lin, 2*2 + 5*32, 2*64*5 + 2*2*10},
		// down 3x3 s2 p1 16->4 on 8x8 gives 4x4; up 1x1 4->32; no bias.
		{"lowrank conv", "lowrank_conv", blueprint.Params{"rank": 4}, conv, 4*16*9 + 32*4, 16*(2*4*16*9) + 16*(2*32*4)},
		// dw 5x5 (pad 2 keeps the host's size) 16->32 groups 16, relu, pw 32->32.
		{"depthwise k5 x2", "depthwise", blueprint.Params{"kernel": 5, "multiplier": 2}, conv, (32*25 + 32) + (32*32 + 32), 16*(2*32*25+32) + 32*16 + 16*(2*32*32+32)},
		// conv1d host k5 p2: a 3x1 depthwise with pad 1 keeps L (32 by default).
		{"depthwise 1d", "depthwise", nil, conv1, (8*3 + 8) + (12*8 + 12), 32*(2*8*3+8) + 8*32 + 32*(2*12*8+12)},
		{"causal attention", "attention_head", blueprint.Params{"heads": 4, "mask": "causal"}, blueprint.Host{Kind: "residual", Dim: 32}, 64 + 4*32*32 + 4*32, 5*32 + 8*32*32 + 4*32},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ir := mustInstantiate(t, tc.tmpl, tc.params, tc.host)
			if ir.ParamCount != tc.count || ir.FLOPsPerSample != tc.flops {
				t.Fatalf("counts = (%d, %d), want (%d, %d)", ir.ParamCount, ir.FLOPsPerSample, tc.count, tc.flops)
			}
		})
	}
}

// TestNewTemplateErrors checks that the new parameters are range-checked.
func TestNewTemplateErrors(t *testing.T) {
	lin := sampleHosts[blueprint.LayoutLinear]
	conv := sampleHosts[blueprint.LayoutConv2d]
	cases := []struct {
		tmpl   string
		params blueprint.Params
		host   blueprint.Host
		err    error
		frags  []string
	}{
		{"glu_mlp", blueprint.Params{"gate": "softmax"}, lin, blueprint.ErrParam, []string{"softmax", "silu, sigmoid, gelu, relu, tanh"}},
		{"kron_adapter", blueprint.Params{"factor": 0}, lin, blueprint.ErrParam, []string{`"factor" = 0`}},
		{"depthwise", blueprint.Params{"kernel": 16}, conv, blueprint.ErrParam, []string{`"kernel" = 16`, "[1, 15]"}},
		{"depthwise", blueprint.Params{"multiplier": 9}, conv, blueprint.ErrParam, []string{`"multiplier" = 9`}},
		{"attention_head", blueprint.Params{"mask": "future"}, sampleHosts[blueprint.LayoutResidual], blueprint.ErrParam, []string{"future", "none, causal"}},
		{"lowrank_conv", nil, lin, blueprint.ErrUnsupportedHost, []string{"conv1d, conv2d, residual_1d, residual_2d", "not linear"}},
		{"glu_mlp", nil, conv, blueprint.ErrUnsupportedHost, []string{"not conv2d"}},
		{"residual_mlp", blueprint.Params{"activation": "softplus"}, lin, blueprint.ErrParam, []string{"leaky_relu, elu, mish, hardswish"}},
	}
	for _, tc := range cases {
		t.Run(tc.tmpl, func(t *testing.T) {
			_, err := blueprint.Instantiate(tc.tmpl, tc.params, tc.host)
			wantErr(t, err, tc.err, errcode.Invalid, tc.frags...)
		})
	}
}

// TestEveryChoiceOfEveryTemplate instantiates each template with each value
// of each enum parameter, and with the bounds of each int parameter, on each
// host it supports: every instance is valid or refused with code Invalid.
func TestEveryChoiceOfEveryTemplate(t *testing.T) {
	for _, tm := range blueprint.Templates() {
		for layout, host := range sampleHosts {
			if !tm.Supports(host) {
				continue
			}
			var variants []blueprint.Params
			for _, p := range tm.Params {
				for _, c := range p.Choices {
					variants = append(variants, blueprint.Params{p.Name: c})
				}
				if p.Kind == blueprint.ParamInt {
					variants = append(variants, blueprint.Params{p.Name: p.Min}, blueprint.Params{p.Name: min(p.Max, 64)})
				}
			}
			for _, v := range variants {
				ir, err := tm.Instantiate(v, host)
				if err != nil {
					// Only a shape the host cannot take (heads not dividing dim) may refuse.
					wantErr(t, err, blueprint.ErrAttr, errcode.Invalid, "divisible")
					continue
				}
				c, err := ir.Canonical()
				if err != nil {
					t.Fatalf("%s/%s %v: %v", tm.Name, layout, v, err)
				}
				if _, err := blueprint.Parse(c); err != nil {
					t.Fatalf("%s/%s %v: canonical form refused: %v", tm.Name, layout, v, err)
				}
			}
		}
	}
}

// TestDefaultAttrsLeaveTheCanonicalForm checks that spelling out an optional
// attribute's default ("causal": false, "init": "default") does not change
// the id, while a non-default value does.
func TestDefaultAttrsLeaveTheCanonicalForm(t *testing.T) {
	doc := `{"version":1,"host":{"kind":"residual","dim":8},"ops":[{"id":"o","op":"attention","inputs":["x"],"attrs":{"dim":8,"heads":2,CAUSAL"init":"zero"}}],"output":"o"}`
	ids := map[string]string{}
	for name, causal := range map[string]string{"absent": ``, "false": `"causal":false,`, "true": `"causal":true,`} {
		ir, err := blueprint.Parse([]byte(strings.Replace(doc, "CAUSAL", causal, 1)))
		if err != nil {
			t.Fatal(err)
		}
		ids[name], _ = ir.ID()
	}
	if ids["absent"] != ids["false"] || ids["true"] == ids["false"] {
		t.Fatalf("ids = %v", ids)
	}
	built := mustInstantiate(t, "attention_head", blueprint.Params{"mask": "causal"}, sampleHosts[blueprint.LayoutResidual])
	if built.Ops[1].Attrs["causal"] != true {
		t.Fatalf("mask causal gave attrs %v", built.Ops[1].Attrs)
	}
	plain := mustInstantiate(t, "attention_head", nil, sampleHosts[blueprint.LayoutResidual])
	if _, ok := plain.Ops[1].Attrs["causal"]; ok {
		t.Fatalf("mask none spells causal out: %v", plain.Ops[1].Attrs)
	}
}

// TestKronIsMergeable checks that a chain of linear and kron_linear ops is
// mergeable into a linear host, and one with an activation is not.
func TestKronIsMergeable(t *testing.T) {
	kron := `{"id":"k","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":8,"in_factor":2,"out_factor":2}}`
	for _, tc := range []struct {
		ops       string
		mergeable bool
	}{
		{kron + `,{"id":"o","op":"linear","inputs":["k"],"attrs":{"in":8,"out":6,"bias":true,"init":"zero"}}`, true},
		{kron + `,{"id":"a","op":"elu","inputs":["k"]},{"id":"o","op":"linear","inputs":["a"],"attrs":{"in":8,"out":6,"bias":true,"init":"zero"}}`, false},
	} {
		ir, err := blueprint.Parse([]byte(`{"version":1,"host":{"kind":"linear","in":8,"out":6},"ops":[` + tc.ops + `],"output":"o"}`))
		if err != nil {
			t.Fatal(err)
		}
		a, err := blueprint.Analyze(ir, ir.Host)
		if err != nil || a.Mergeable != tc.mergeable {
			t.Fatalf("mergeable = %v (%v), want %v", a.Mergeable, err, tc.mergeable)
		}
	}
}
