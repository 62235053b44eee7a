package onnxrt

import (
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file writes small ONNX models (onnx.proto3 ModelProto) field by field,
// so the tests need neither Python nor a checked-in binary model. Field
// numbers are those of onnx/onnx.proto.

const (
	onnxFloat = 1 // TensorProto.DataType FLOAT
	onnxInt64 = 7 // TensorProto.DataType INT64
)

func bytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func stringField(b []byte, num protowire.Number, s string) []byte {
	return bytesField(b, num, []byte(s))
}

func intField(b []byte, num protowire.Number, v int64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

// initializer is a float32 TensorProto with raw little-endian data.
func initializer(name string, dims []int64, data []float32) []byte {
	var t []byte
	for _, d := range dims {
		t = intField(t, 1, d) // dims
	}
	t = intField(t, 2, onnxFloat) // data_type
	t = stringField(t, 8, name)   // name
	raw := make([]byte, 0, 4*len(data))
	for _, v := range data {
		u := math.Float32bits(v)
		raw = append(raw, byte(u), byte(u>>8), byte(u>>16), byte(u>>24))
	}
	return bytesField(t, 9, raw) // raw_data
}

// int64Initializer is an INT64 TensorProto (int64_data, packed).
func int64Initializer(name string, dims []int64, data []int64) []byte {
	var t []byte
	for _, d := range dims {
		t = intField(t, 1, d)
	}
	t = intField(t, 2, onnxInt64)
	var packed []byte
	for _, v := range data {
		packed = protowire.AppendVarint(packed, uint64(v))
	}
	t = bytesField(t, 7, packed) // int64_data
	return stringField(t, 8, name)
}

// valueInfo is a ValueInfoProto for a tensor; a dim of -1 is the symbolic "batch".
func valueInfo(name string, elem int64, dims []int64) []byte {
	var shape []byte
	for _, d := range dims {
		var dim []byte
		if d < 0 {
			dim = stringField(dim, 2, "batch") // dim_param
		} else {
			dim = intField(dim, 1, d) // dim_value
		}
		shape = bytesField(shape, 1, dim)
	}
	var tensor []byte
	tensor = intField(tensor, 1, elem)    // elem_type
	tensor = bytesField(tensor, 2, shape) // shape
	typ := bytesField(nil, 1, tensor)     // TypeProto.tensor_type
	v := stringField(nil, 1, name)
	return bytesField(v, 2, typ)
}

// node is a NodeProto; attrs are INT attributes.
func node(op string, inputs, outputs []string, attrs map[string]int64) []byte {
	var n []byte
	for _, s := range inputs {
		n = stringField(n, 1, s)
	}
	for _, s := range outputs {
		n = stringField(n, 2, s)
	}
	n = stringField(n, 4, op)
	for k, v := range attrs {
		a := stringField(nil, 1, k)
		a = intField(a, 3, v)  // i
		a = intField(a, 20, 2) // type INT
		n = bytesField(n, 5, a)
	}
	return n
}

// model wraps graph parts into a ModelProto (IR version 8, opset 17).
func model(nodes, inits, inputs, outputs [][]byte) []byte {
	var g []byte
	for _, n := range nodes {
		g = bytesField(g, 1, n)
	}
	g = stringField(g, 2, "test")
	for _, t := range inits {
		g = bytesField(g, 5, t)
	}
	for _, v := range inputs {
		g = bytesField(g, 11, v)
	}
	for _, v := range outputs {
		g = bytesField(g, 12, v)
	}
	m := intField(nil, 1, 8) // ir_version
	opset := intField(nil, 2, 17)
	m = bytesField(m, 8, opset)
	return bytesField(m, 7, g)
}

// mlp is a two-layer perceptron: y = relu(x W1 + b1) W2 + b2, with W1 [n, h]
// and W2 [h, k] row-major, input "x" [batch, n] and output "y" [batch, k];
// with sum set, a second output "s" [batch] holds each row's sum of y.
type mlp struct {
	n, h, k int
	w1, b1  []float32
	w2, b2  []float32
	sum     bool
}

func (p mlp) onnx() []byte {
	nodes := [][]byte{
		node("MatMul", []string{"x", "w1"}, []string{"a"}, nil),
		node("Add", []string{"a", "b1"}, []string{"z"}, nil),
		node("Relu", []string{"z"}, []string{"r"}, nil),
		node("MatMul", []string{"r", "w2"}, []string{"c"}, nil),
		node("Add", []string{"c", "b2"}, []string{"y"}, nil),
	}
	inits := [][]byte{
		initializer("w1", []int64{int64(p.n), int64(p.h)}, p.w1),
		initializer("b1", []int64{int64(p.h)}, p.b1),
		initializer("w2", []int64{int64(p.h), int64(p.k)}, p.w2),
		initializer("b2", []int64{int64(p.k)}, p.b2),
	}
	outputs := [][]byte{valueInfo("y", onnxFloat, []int64{-1, int64(p.k)})}
	if p.sum {
		nodes = append(nodes, node("ReduceSum", []string{"y", "axes"}, []string{"s"}, map[string]int64{"keepdims": 0}))
		inits = append(inits, int64Initializer("axes", []int64{1}, []int64{1}))
		outputs = append(outputs, valueInfo("s", onnxFloat, []int64{-1}))
	}
	return model(nodes, inits, [][]byte{valueInfo("x", onnxFloat, []int64{-1, int64(p.n)})}, outputs)
}

// forward is the reference: the same network in float64, written out loop by loop.
func (p mlp) forward(x []float32, rows int) []float64 {
	y := make([]float64, rows*p.k)
	hid := make([]float64, p.h)
	for r := 0; r < rows; r++ {
		for j := 0; j < p.h; j++ {
			s := float64(p.b1[j])
			for i := 0; i < p.n; i++ {
				s += float64(x[r*p.n+i]) * float64(p.w1[i*p.h+j])
			}
			hid[j] = math.Max(s, 0)
		}
		for j := 0; j < p.k; j++ {
			s := float64(p.b2[j])
			for i := 0; i < p.h; i++ {
				s += hid[i] * float64(p.w2[i*p.k+j])
			}
			y[r*p.k+j] = s
		}
	}
	return y
}
