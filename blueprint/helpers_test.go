package blueprint_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
)

// sampleHosts has one valid host per layout.
var sampleHosts = map[string]blueprint.Host{
	blueprint.LayoutLinear:     {Kind: blueprint.HostLinear, In: 64, Out: 10},
	blueprint.LayoutResidual:   {Kind: blueprint.HostResidual, Dim: 32},
	blueprint.LayoutConv2d:     {Kind: blueprint.HostConv2d, In: 16, Out: 32, Kernel: 3, Stride: 2, Padding: 1, Spatial: []int64{8, 8}},
	blueprint.LayoutResidual2d: {Kind: blueprint.HostResidual, Dim: 16, Spatial: []int64{8, 8}},
	blueprint.LayoutConv1d:     {Kind: blueprint.HostConv1d, In: 8, Out: 12, Kernel: 5, Stride: 1, Padding: 2},
	blueprint.LayoutResidual1d: {Kind: blueprint.HostResidual, Dim: 8, Spatial: []int64{100}},
	blueprint.LayoutConv2dPair: {Kind: blueprint.HostConv2dPair, In: 3, Mid: 8, Out: 16, Kernel: 3, Stride: 1, Padding: 1,
		ConsumerKernel: 3, ConsumerStride: 2, ConsumerPadding: 1, Activation: blueprint.OpReLU, Spatial: []int64{8, 8}},
	blueprint.LayoutConv1dPair: {Kind: blueprint.HostConv1dPair, In: 4, Mid: 6, Out: 5, Kernel: 5, Stride: 1, Padding: 2,
		ConsumerKernel: 1, ConsumerStride: 1, ConsumerPadding: 0, Activation: blueprint.ActIdentity},
}

// wantErr fails unless err wraps sentinel, has code and mentions every
// fragment.
func wantErr(t testing.TB, err, sentinel error, code errcode.Code, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %v", sentinel)
	}
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %q does not wrap %v", err, sentinel)
	}
	if got := errcode.Of(err); got != code {
		t.Fatalf("errcode.Of(%q) = %v, want %v", err, got, code)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Fatalf("error %q does not mention %q", err, f)
		}
	}
}

func mustInstantiate(t testing.TB, name string, p blueprint.Params, h blueprint.Host) *blueprint.IR {
	t.Helper()
	ir, err := blueprint.Instantiate(name, p, h)
	if err != nil {
		t.Fatalf("Instantiate(%s, %v): %v", name, p, err)
	}
	return ir
}

func errorsIsBudget(err error) bool { return errors.Is(err, blueprint.ErrOverBudget) }
