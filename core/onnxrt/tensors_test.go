package onnxrt_test

import (
	"slices"
	"strings"
	"testing"

	. "github.com/esper-morph/esper/core/onnxrt"
	"github.com/esper-morph/esper/core/onnxrt/onnxtest"
)

// gatherModel takes x [batch, 3] float32 and idx [batch] int64 (dynamic
// sizes) and gives g = x[idx] (Gather on axis 0) and s = x + x.
func gatherModel() []byte {
	const elemFloat, elemInt64 = 1, 7
	return onnxtest.Model(
		[][]byte{onnxtest.Node("Gather", []string{"x", "idx"}, []string{"g"}, map[string]int64{"axis": 0}),
			onnxtest.Node("Add", []string{"x", "x"}, []string{"s"}, nil)},
		nil,
		[][]byte{onnxtest.ValueInfo("x", elemFloat, []int64{-1, 3}), onnxtest.ValueInfo("idx", elemInt64, []int64{-1})},
		[][]byte{onnxtest.ValueInfo("g", elemFloat, []int64{-1, 3}), onnxtest.ValueInfo("s", elemFloat, []int64{-1, 3})})
}

func TestTensorModel(t *testing.T) {
	m, err := runtimeFor(t).OpenTensors(writeModel(t, gatherModel()), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !slices.Equal(m.Inputs(), []string{"x", "idx"}) || !slices.Equal(m.Outputs(), []string{"g", "s"}) {
		t.Fatalf("inputs %v, outputs %v", m.Inputs(), m.Outputs())
	}
	x := []float32{0, 1, 2, 10, 11, 12, 20, 21, 22}
	for _, tc := range []struct {
		name string
		idx  []int64
		want []float32
	}{
		{"one row", []int64{2}, []float32{20, 21, 22}},
		{"rows out of order, repeated", []int64{1, 0, 1}, []float32{10, 11, 12, 0, 1, 2, 10, 11, 12}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The inputs by name, in another order than the model's.
			out, err := m.Run([]Tensor{{Name: "idx", Shape: []int64{int64(len(tc.idx))}, I64: tc.idx},
				{Name: "x", Shape: []int64{3, 3}, F32: x}})
			if err != nil {
				t.Fatal(err)
			}
			if out[0].Name != "g" || !slices.Equal(out[0].F32, tc.want) || !slices.Equal(out[0].Shape, []int64{int64(len(tc.idx)), 3}) {
				t.Fatalf("g = %v %v, want %v", out[0].Shape, out[0].F32, tc.want)
			}
			if !slices.Equal(out[1].F32, []float32{0, 2, 4, 20, 22, 24, 40, 42, 44}) {
				t.Fatalf("s = %v", out[1].F32)
			}
		})
	}
	for _, tc := range []struct {
		name   string
		inputs []Tensor
		want   string
	}{
		{"missing input", []Tensor{{Name: "x", Shape: []int64{3, 3}, F32: x}}, "missing"},
		{"unknown input", []Tensor{{Name: "y", Shape: []int64{3, 3}, F32: x}}, "not one of"},
		{"wrong shape", []Tensor{{Name: "x", Shape: []int64{3, 4}, F32: x}, {Name: "idx", Shape: []int64{1}, I64: []int64{0}}}, "x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := m.Run(tc.inputs); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Run(nil); err == nil {
		t.Fatal("Run after Close succeeded")
	}
}
