package blueprint_test

import (
	"testing"

	"github.com/esper-morph/esper/blueprint"
)

func TestHostForwardFLOPs(t *testing.T) {
	lin := blueprint.Host{Kind: blueprint.HostLinear, In: 8, Out: 4}
	for _, tc := range []struct {
		name   string
		host   blueprint.Host
		params int64
		want   int64
		ok     bool
	}{
		{"linear with bias", lin, 36, 2*32 + 4, true},
		{"linear without bias", lin, 32, 64, true},
		{"linear, other params", lin, 40, 0, false},
		{"conv1d, L 10, kernel 3, no padding", blueprint.Host{Kind: blueprint.HostConv1d, In: 2, Out: 3, Kernel: 3, Stride: 1, Spatial: []int64{10}},
			18, 8 * 36, true},
		{"conv2d default extent, stride 2", blueprint.Host{Kind: blueprint.HostConv2d, In: 1, Out: 2, Kernel: 1, Stride: 2},
			4, 16 * 16 * (4 + 2), true},
		{"block", blueprint.Host{Kind: blueprint.HostBlock, In: 8, Out: 8}, 72, 0, false},
		{"invalid host", blueprint.Host{Kind: blueprint.HostLinear}, 0, 0, false},
	} {
		got, ok := tc.host.ForwardFLOPs(tc.params)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: ForwardFLOPs(%d) = %d, %v; want %d, %v", tc.name, tc.params, got, ok, tc.want, tc.ok)
		}
	}
	// Karn counts a full-rank linear seed (no bias) on a host like the host
	// itself without bias: the two counts agree.
	ir := mustInstantiate(t, "linear", nil, lin)
	if got, _ := lin.ForwardFLOPs(32); got != ir.FLOPsPerSample {
		t.Errorf("host without bias %d FLOPs, Karn's linear seed %d", got, ir.FLOPsPerSample)
	}
}
