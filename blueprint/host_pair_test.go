package blueprint_test

import (
	"math/rand/v2"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
)

func pairHost() blueprint.Host {
	return blueprint.Host{Kind: blueprint.HostConv2dPair, In: 3, Mid: 8, Out: 16, Kernel: 3, Stride: 1, Padding: 1,
		ConsumerKernel: 3, ConsumerStride: 2, ConsumerPadding: 1, Activation: blueprint.OpReLU, Spatial: []int64{8, 8}}
}

// A conv pair host is validated field by field; fields of a pair on another
// kind are refused.
func TestPairHostValidate(t *testing.T) {
	cases := []struct {
		name   string
		edit   func(h *blueprint.Host)
		errors []string // fragments; none: valid
	}{
		{"conv2d pair", func(*blueprint.Host) {}, nil},
		{"conv1d pair, identity", func(h *blueprint.Host) {
			h.Kind, h.Activation, h.Spatial = blueprint.HostConv1dPair, blueprint.ActIdentity, []int64{16}
		}, nil},
		{"no mid", func(h *blueprint.Host) { h.Mid = 0 }, []string{"mid = 0"}},
		{"no consumer kernel", func(h *blueprint.Host) { h.ConsumerKernel = 0 }, []string{"consumer_kernel = 0"}},
		{"unknown activation", func(h *blueprint.Host) { h.Activation = "softmax" }, []string{`activation "softmax" is not one of identity, relu`}},
		{"no activation", func(h *blueprint.Host) { h.Activation = "" }, []string{`activation "" is not one of`}},
		{"dim", func(h *blueprint.Host) { h.Dim = 4 }, []string{"no field dim"}},
		{"spatial count", func(h *blueprint.Host) { h.Spatial = []int64{8} }, []string{"spatial must have 2 extents"}},
		{"consumer kernel too big", func(h *blueprint.Host) { h.Spatial, h.ConsumerKernel, h.ConsumerPadding = []int64{2, 2}, 5, 0 },
			[]string{"gives the consumer an extent 2, smaller than its kernel 5"}},
		{"pair fields on conv2d", func(h *blueprint.Host) { h.Kind = blueprint.HostConv2d },
			[]string{"conv2d host has no field mid", "no field consumer_kernel", `no field activation (got "relu")`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := pairHost()
			tc.edit(&h)
			err := h.Validate()
			if tc.errors == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			wantErr(t, err, blueprint.ErrHost, errcode.Invalid, tc.errors...)
		})
	}
}

// widen is the only template a pair takes; its seed has the pair's output
// shape, the hand-counted parameters and FLOPs, and is mergeable.
func TestWidenTemplate(t *testing.T) {
	cases := []struct {
		name          string
		host          blueprint.Host
		width         int64
		params, flops int64
		ops           []string
	}{
		// producer conv 3->4 k3 at 8x8 (2*3*9*4 + 4 per position, 64 positions), relu on 4x64,
		// consumer 4->16 k3 stride 2 to 4x4 (2*4*9*16 per position, 16 positions, no bias).
		{"conv2d relu", pairHost(), 4, 3*4*9 + 4 + 4*16*9, 64*(2*3*9*4+4) + 4*64 + 16*(2*4*9*16), []string{"conv2d", "relu", "conv2d"}},
		{"conv1d identity", blueprint.Host{Kind: blueprint.HostConv1dPair, In: 2, Mid: 3, Out: 5, Kernel: 1, Stride: 1,
			ConsumerKernel: 1, ConsumerStride: 1, Activation: blueprint.ActIdentity, Spatial: []int64{10}},
			6, 2*6 + 6 + 6*5, 10*(2*2*6+6) + 10*(2*6*5), []string{"conv1d", "conv1d"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ir := mustInstantiate(t, "widen", blueprint.Params{"width": tc.width}, tc.host)
			if ir.ParamCount != tc.params || ir.FLOPsPerSample != tc.flops {
				t.Fatalf("widen costs %d params / %d flops, want %d / %d", ir.ParamCount, ir.FLOPsPerSample, tc.params, tc.flops)
			}
			var ops []string
			for _, op := range ir.Ops {
				ops = append(ops, op.Op)
			}
			if len(ops) != len(tc.ops) {
				t.Fatalf("ops %v, want %v", ops, tc.ops)
			}
			for i := range ops {
				if ops[i] != tc.ops[i] {
					t.Fatalf("ops %v, want %v", ops, tc.ops)
				}
			}
			tpl, err := blueprint.Lookup("widen")
			if err != nil || !tpl.Mergeable {
				t.Fatalf("widen: %v, mergeable %v", err, tpl.Mergeable)
			}
		})
	}
	for _, tpl := range blueprint.Templates() {
		if tpl.Name == "widen" {
			continue
		}
		if _, err := blueprint.Instantiate(tpl.Name, nil, pairHost()); err == nil {
			t.Fatalf("%s instantiated on a conv pair", tpl.Name)
		}
	}
	if _, err := blueprint.Instantiate("widen", nil, sampleHosts[blueprint.LayoutConv2d]); err == nil {
		t.Fatal("widen instantiated on a plain conv2d host")
	}
}

// A seed on a pair host must be exactly a widening of it: any other IR,
// valid in shape and zero at init, is refused with the reason.
func TestPairTakesOnlyWidenings(t *testing.T) {
	host := pairHost()
	cases := []struct {
		name     string
		edit     func(ir *blueprint.IR)
		sentinel error
		fragment string
	}{
		{"consumer with bias", func(ir *blueprint.IR) { ir.Ops[2].Attrs["bias"] = true }, blueprint.ErrNotWidening,
			`the output op "consumer" is conv2d kernel 3 stride 2 padding 1 bias true init zero`},
		{"consumer not zero", func(ir *blueprint.IR) { delete(ir.Ops[2].Attrs, "init") }, blueprint.ErrNotZeroInit, "non-zero"},
		{"producer 1x1", func(ir *blueprint.IR) { ir.Ops[0].Attrs["kernel"], ir.Ops[0].Attrs["padding"] = int64(1), int64(0) },
			blueprint.ErrNotWidening, `the producer op "producer" is conv2d kernel 1 stride 1 padding 0`},
		{"producer zero", func(ir *blueprint.IR) { ir.Ops[0].Attrs["init"] = blueprint.InitZero }, blueprint.ErrNotWidening,
			"init zero with groups 1, want conv2d kernel 3 stride 1 padding 1 bias true init default"},
		{"grouped producer", func(ir *blueprint.IR) { ir.Ops[0].Attrs["in"], ir.Ops[0].Attrs["groups"] = int64(3), int64(1) },
			nil, ""},
		{"other activation", func(ir *blueprint.IR) { ir.Ops[1].Op = blueprint.OpTanh }, blueprint.ErrNotWidening,
			`op "act" is tanh, the pair's activation is relu`},
		{"no activation", func(ir *blueprint.IR) {
			ir.Ops = []blueprint.Op{ir.Ops[0], ir.Ops[2]}
			ir.Ops[1].Inputs = []string{"producer"}
		}, blueprint.ErrNotWidening, "2 ops, want 3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ir := mustInstantiate(t, "widen", blueprint.Params{"width": int64(4)}, host)
			tc.edit(ir)
			err := blueprint.Check(ir, host, blueprint.Budget{})
			if tc.sentinel == nil {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			wantErr(t, err, tc.sentinel, errcode.Invalid, tc.fragment)
		})
	}
	// A conv3x3 block has the pair's output shape (stride 2 on 8x8 -> 4x4) and is zero at init, but
	// is not a widening: it could not merge into the pair.
	block := mustInstantiate(t, "conv3x3", blueprint.Params{"width": int64(4)},
		blueprint.Host{Kind: blueprint.HostConv2d, In: 3, Out: 16, Kernel: 3, Stride: 2, Padding: 1, Spatial: []int64{8, 8}})
	wantErr(t, blueprint.Check(block, host, blueprint.Budget{}), blueprint.ErrNotWidening, errcode.Invalid,
		"a conv2d_pair host takes only widening seeds", `the output op "conv2" is conv2d kernel 3 stride 1 padding 1`)
}

// Mutating a widening varies its width and stays a widening of the pair.
func TestMutateWidenStaysAWidening(t *testing.T) {
	host := pairHost()
	ir := mustInstantiate(t, "widen", blueprint.Params{"width": int64(8)}, host)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20; i++ {
		m, err := blueprint.Mutate(ir, blueprint.Budget{}, rng)
		if err != nil {
			t.Fatalf("Mutate: %v", err)
		}
		if m.Template != "widen" || m.Params["width"] == ir.Params["width"] {
			t.Fatalf("mutation %v of %v", m.Params, ir.Params)
		}
		if err := blueprint.Check(m, host, blueprint.Budget{}); err != nil {
			t.Fatalf("mutated widening refused: %v", err)
		}
	}
}
