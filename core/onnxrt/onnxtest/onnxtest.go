// Package onnxtest writes small ONNX models (onnx.proto3 ModelProto) field
// by field, for tests: they need neither Python nor a checked-in binary
// model. Field numbers are those of onnx/onnx.proto. Only tests import it.
package onnxtest

import (
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Element types (TensorProto.DataType).
const (
	Float = 1
	Int64 = 7
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

// Initializer is a float32 TensorProto with raw little-endian data.
func Initializer(name string, dims []int64, data []float32) []byte {
	var t []byte
	for _, d := range dims {
		t = intField(t, 1, d) // dims
	}
	t = intField(t, 2, Float)   // data_type
	t = stringField(t, 8, name) // name
	raw := make([]byte, 0, 4*len(data))
	for _, v := range data {
		u := math.Float32bits(v)
		raw = append(raw, byte(u), byte(u>>8), byte(u>>16), byte(u>>24))
	}
	return bytesField(t, 9, raw) // raw_data
}

// Int64Initializer is an INT64 TensorProto (int64_data, packed).
func Int64Initializer(name string, dims []int64, data []int64) []byte {
	var t []byte
	for _, d := range dims {
		t = intField(t, 1, d)
	}
	t = intField(t, 2, Int64)
	var packed []byte
	for _, v := range data {
		packed = protowire.AppendVarint(packed, uint64(v))
	}
	t = bytesField(t, 7, packed) // int64_data
	return stringField(t, 8, name)
}

// ValueInfo is a ValueInfoProto for a tensor; a dim of -1 is the symbolic "batch".
func ValueInfo(name string, elem int64, dims []int64) []byte {
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

// Node is a NodeProto; attrs are INT attributes.
func Node(op string, inputs, outputs []string, attrs map[string]int64) []byte {
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

// Model wraps graph parts into a ModelProto (IR version 8, opset 17).
func Model(nodes, inits, inputs, outputs [][]byte) []byte {
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

// MLP is a two-layer perceptron: y = relu(x W1 + b1) W2 + b2, with W1 [n, h]
// and W2 [h, k] row-major, input "x" [batch, n] and output "y" [batch, k];
// with sum set, a second output "s" [batch] holds each row's sum of y.
type MLP struct {
	N, H, K int
	W1, B1  []float32
	W2, B2  []float32
	Sum     bool
}

// ONNX is the network as an ONNX model.
func (p MLP) ONNX() []byte {
	nodes := [][]byte{
		Node("MatMul", []string{"x", "w1"}, []string{"a"}, nil),
		Node("Add", []string{"a", "b1"}, []string{"z"}, nil),
		Node("Relu", []string{"z"}, []string{"r"}, nil),
		Node("MatMul", []string{"r", "w2"}, []string{"c"}, nil),
		Node("Add", []string{"c", "b2"}, []string{"y"}, nil),
	}
	inits := [][]byte{
		Initializer("w1", []int64{int64(p.N), int64(p.H)}, p.W1),
		Initializer("b1", []int64{int64(p.H)}, p.B1),
		Initializer("w2", []int64{int64(p.H), int64(p.K)}, p.W2),
		Initializer("b2", []int64{int64(p.K)}, p.B2),
	}
	outputs := [][]byte{ValueInfo("y", Float, []int64{-1, int64(p.K)})}
	if p.Sum {
		nodes = append(nodes, Node("ReduceSum", []string{"y", "axes"}, []string{"s"}, map[string]int64{"keepdims": 0}))
		inits = append(inits, Int64Initializer("axes", []int64{1}, []int64{1}))
		outputs = append(outputs, ValueInfo("s", Float, []int64{-1}))
	}
	return Model(nodes, inits, [][]byte{ValueInfo("x", Float, []int64{-1, int64(p.N)})}, outputs)
}

// Forward is the reference: the same network in float64, written out loop by loop.
func (p MLP) Forward(x []float32, rows int) []float64 {
	y := make([]float64, rows*p.K)
	hid := make([]float64, p.H)
	for r := 0; r < rows; r++ {
		for j := 0; j < p.H; j++ {
			s := float64(p.B1[j])
			for i := 0; i < p.N; i++ {
				s += float64(x[r*p.N+i]) * float64(p.W1[i*p.H+j])
			}
			hid[j] = math.Max(s, 0)
		}
		for j := 0; j < p.K; j++ {
			s := float64(p.B2[j])
			for i := 0; i < p.H; i++ {
				s += hid[i] * float64(p.W2[i*p.K+j])
			}
			y[r*p.K+j] = s
		}
	}
	return y
}
