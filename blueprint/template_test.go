package blueprint_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
)

func TestTemplateLibrary(t *testing.T) {
	ts := blueprint.Templates()
	if len(ts) < 10 {
		t.Fatalf("library has %d templates", len(ts))
	}
	want := []string{"attention_head", "bottleneck", "conv1d_block", "conv3x3", "depthwise", "glu_mlp", "kron_adapter", "linear", "lowrank", "lowrank_conv", "norm_mlp", "residual_mlp", "se_gate", "widen"}
	var names []string
	for _, tm := range ts {
		names = append(names, tm.Name)
		if tm.Description == "" || len(tm.Layouts) == 0 {
			t.Errorf("template %q lacks a description or layouts", tm.Name)
		}
		for _, p := range tm.Params {
			if p.Doc == "" {
				t.Errorf("template %q parameter %q has no doc", tm.Name, p.Name)
			}
			if _, err := tm.Resolve(blueprint.Params{p.Name: p.Default}); err != nil {
				t.Errorf("template %q default of %q is refused: %v", tm.Name, p.Name, err)
			}
		}
	}
	if !slices.Equal(names, want) {
		t.Fatalf("templates = %v, want %v", names, want)
	}
	// Templates returns copies.
	ts[0].Layouts[0] = "mutated"
	if blueprint.Templates()[0].Layouts[0] == "mutated" {
		t.Fatal("Templates exposes the library")
	}
	doc, err := json.Marshal(ts)
	if err != nil {
		t.Fatal(err)
	}
	// "params" is an array for every template, also one without parameters.
	var decoded []map[string]any
	if err := json.Unmarshal(doc, &decoded); err != nil {
		t.Fatal(err)
	}
	for _, tm := range decoded {
		if _, ok := tm["params"].([]any); !ok {
			t.Errorf("template %v: params = %#v, want a JSON array", tm["name"], tm["params"])
		}
	}
}

// TestEveryTemplateOnEveryLayout instantiates each template on a sample host
// of each layout: supported ones must be valid, zero at init and match the
// host's output shape; the others must be refused.
func TestEveryTemplateOnEveryLayout(t *testing.T) {
	for _, tm := range blueprint.Templates() {
		for layout, host := range sampleHosts {
			t.Run(tm.Name+"/"+layout, func(t *testing.T) {
				ir, err := tm.Instantiate(nil, host)
				if !slices.Contains(tm.Layouts, layout) {
					wantErr(t, err, blueprint.ErrUnsupportedHost, errcode.Invalid, tm.Name, layout)
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				a, err := blueprint.Analyze(ir, host)
				if err != nil {
					t.Fatal(err)
				}
				if !a.Output.Equal(host.OutputShape()) {
					t.Fatalf("output %v, host output %v", a.Output, host.OutputShape())
				}
				if a.Mergeable != tm.Mergeable {
					t.Fatalf("mergeable = %v, template says %v", a.Mergeable, tm.Mergeable)
				}
				if ir.ParamCount <= 0 || ir.FLOPsPerSample <= 0 || ir.ParamCount != a.ParamCount {
					t.Fatalf("counts %d, %d", ir.ParamCount, ir.FLOPsPerSample)
				}
				if ir.Template != tm.Name || len(ir.Params) != len(tm.Params) {
					t.Fatalf("template %q params %v", ir.Template, ir.Params)
				}
				// The canonical form parses back to the same id.
				c, err := ir.Canonical()
				if err != nil {
					t.Fatal(err)
				}
				back, err := blueprint.Parse(c)
				if err != nil {
					t.Fatalf("canonical form refused: %v\n%s", err, c)
				}
				id1, _ := ir.ID()
				id2, _ := back.ID()
				if id1 != id2 {
					t.Fatal("id changed through Parse")
				}
			})
		}
	}
}

func TestTemplateCounts(t *testing.T) {
	lin := blueprint.Host{Kind: "linear", In: 64, Out: 10}
	conv := blueprint.Host{Kind: "conv2d", In: 16, Out: 32, Kernel: 3, Stride: 2, Padding: 1, Spatial: []int64{8, 8}}
	cases := []struct {
		name   string
		params blueprint.Params
		host   blueprint.Host
		count  int64
		flops  int64
	}{
		{"residual_mlp", blueprint.Params{"width": 16}, lin, 64*16 + 16 + 16*10 + 10, (2*64*16 + 16) + 16 + (2*16*10 + 10)},
		{"lowrank", blueprint.Params{"rank": 4}, lin, 64*4 + 4*10, 2*64*4 + 2*4*10},
		{"linear", nil, lin, 640, 1280},
		{"norm_mlp", blueprint.Params{"width": 8, "activation": "gelu"}, lin, 128 + 64*8 + 8 + 8*10 + 10, 5*64 + (2*64*8 + 8) + 4*8 + (2*8*10 + 10)},
		// conv1 16->8 3x3 s2 p1 on 8x8 gives 4x4; conv2 8->32 3x3.
		{"conv3x3", blueprint.Params{"width": 8}, conv, (8*16*9 + 8) + (32*8*9 + 32), 16*(2*8*16*9+8) + 8*16 + 16*(2*32*8*9+32)},
		{"attention_head", blueprint.Params{"heads": 4}, blueprint.Host{Kind: "residual", Dim: 32}, 64 + 4*32*32 + 4*32, 5*32 + 8*32*32 + 4*32},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ir := mustInstantiate(t, tc.name, tc.params, tc.host)
			if ir.ParamCount != tc.count || ir.FLOPsPerSample != tc.flops {
				t.Fatalf("counts = (%d, %d), want (%d, %d)", ir.ParamCount, ir.FLOPsPerSample, tc.count, tc.flops)
			}
		})
	}
}

// TestConvTemplatesHonourHostGeometry checks that spatial templates produce
// the host's output size for strided and oddly padded hosts.
func TestConvTemplatesHonourHostGeometry(t *testing.T) {
	geoms := []struct {
		k, s, p   int64
		firstConv int64 // kernel conv3x3 uses
	}{
		{3, 1, 1, 3}, {3, 2, 1, 3}, {1, 2, 0, 3}, {7, 2, 3, 3}, {2, 2, 0, 2}, {5, 1, 0, 5}, {4, 4, 0, 4}, {1, 1, 0, 3},
	}
	for _, g := range geoms {
		host := blueprint.Host{Kind: "conv2d", In: 8, Out: 16, Kernel: g.k, Stride: g.s, Padding: g.p}
		for _, name := range []string{"conv3x3", "depthwise", "se_gate", "bottleneck"} {
			ir := mustInstantiate(t, name, nil, host)
			a, err := blueprint.Analyze(ir, host)
			if err != nil || !a.Output.Equal(host.OutputShape()) {
				t.Fatalf("%s on k%d s%d p%d: %v", name, g.k, g.s, g.p, err)
			}
		}
		ir := mustInstantiate(t, "conv3x3", nil, host)
		if k, _ := ir.Ops[0].Attrs["kernel"].(int64); k != g.firstConv {
			t.Fatalf("conv3x3 on k%d s%d p%d: first kernel %d, want %d", g.k, g.s, g.p, k, g.firstConv)
		}
		host1 := blueprint.Host{Kind: "conv1d", In: 8, Out: 16, Kernel: g.k, Stride: g.s, Padding: g.p}
		ir = mustInstantiate(t, "conv1d_block", nil, host1)
		if _, err := blueprint.Analyze(ir, host1); err != nil {
			t.Fatal(err)
		}
	}
}

func TestInstantiateErrors(t *testing.T) {
	lin := sampleHosts[blueprint.LayoutLinear]
	cases := []struct {
		name     string
		template string
		params   blueprint.Params
		host     blueprint.Host
		sentinel error
		code     errcode.Code
		frags    []string
	}{
		{"unknown template", "mlp9", nil, lin, blueprint.ErrUnknownTemplate, errcode.NotFound, []string{"mlp9", "residual_mlp"}},
		{"unknown param", "lowrank", blueprint.Params{"width": 3}, lin, blueprint.ErrParam, errcode.Invalid, []string{`"width"`, "rank"}},
		{"param range", "lowrank", blueprint.Params{"rank": 0}, lin, blueprint.ErrParam, errcode.Invalid, []string{`"rank" = 0`, "[1, 1024]"}},
		{"param type", "residual_mlp", blueprint.Params{"width": "wide"}, lin, blueprint.ErrParam, errcode.Invalid, []string{`"width"`, "integer"}},
		{"enum", "residual_mlp", blueprint.Params{"activation": "softmax"}, lin, blueprint.ErrParam, errcode.Invalid, []string{"softmax", "relu, gelu"}},
		{"layout", "conv3x3", nil, lin, blueprint.ErrUnsupportedHost, errcode.Invalid, []string{"conv2d, residual_2d", "not linear"}},
		{"bad host", "lowrank", nil, blueprint.Host{Kind: "lstm"}, blueprint.ErrHost, errcode.Invalid, []string{"lstm"}},
		{"no params template", "linear", blueprint.Params{"rank": 2}, lin, blueprint.ErrParam, errcode.Invalid, []string{"known: none"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := blueprint.Instantiate(tc.template, tc.params, tc.host)
			wantErr(t, err, tc.sentinel, tc.code, tc.frags...)
		})
	}
	if _, err := (blueprint.Template{Name: "home_made"}).Instantiate(nil, lin); err == nil {
		t.Fatal("a Template not from the library instantiated")
	}
}

func TestHostValidate(t *testing.T) {
	cases := []struct {
		name string
		host blueprint.Host
		frag string
	}{
		{"empty", blueprint.Host{}, `kind ""`},
		{"conv no stride", blueprint.Host{Kind: "conv2d", In: 3, Out: 3, Kernel: 3}, "stride = 0"},
		{"conv negative padding", blueprint.Host{Kind: "conv2d", In: 3, Out: 3, Kernel: 3, Stride: 1, Padding: -1}, "padding = -1"},
		{"conv spatial rank", blueprint.Host{Kind: "conv2d", In: 3, Out: 3, Kernel: 3, Stride: 1, Spatial: []int64{4}}, "2 extents"},
		{"conv spatial too small", blueprint.Host{Kind: "conv1d", In: 3, Out: 3, Kernel: 5, Stride: 1, Spatial: []int64{4}}, "smaller than kernel"},
		{"residual extra", blueprint.Host{Kind: "residual", Dim: 4, In: 4}, "no field in"},
		{"residual 3d", blueprint.Host{Kind: "residual", Dim: 4, Spatial: []int64{2, 2, 2}}, "at most 2"},
		{"huge", blueprint.Host{Kind: "linear", In: 1 << 40, Out: 1}, "in = "},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, tc.host.Validate(), blueprint.ErrHost, errcode.Invalid, tc.frag)
		})
	}
}
