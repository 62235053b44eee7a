package blueprint

import (
	"bytes"
	"encoding/json"
	"math"
	"reflect"
	"testing"

	"github.com/esper-morph/esper/blueprint/canon"
)

// marshalReference is the canonical encoding by encoding/json and a second
// pass (what marshalCanonical did before appendCanonical): defaults
// dropped from a clone, canon.Marshal.
func marshalReference(t *testing.T, ir *IR) []byte {
	t.Helper()
	c := ir.Clone()
	for i := range c.Ops {
		dropDefaults(&c.Ops[i])
	}
	b, err := canon.Marshal(c)
	if err != nil {
		t.Fatalf("canon.Marshal: %v", err)
	}
	return b
}

// TestAppendCanonicalMatchesMarshal holds the direct encoder to canon.Marshal's
// bytes on every template instantiated for hosts of every kind it supports.
func TestAppendCanonicalMatchesMarshal(t *testing.T) {
	hosts := []Host{
		{Kind: "linear", In: 64, Out: 10},
		{Kind: "linear", In: 7, Out: 7},
		{Kind: "conv2d", In: 16, Out: 32, Kernel: 3, Stride: 2, Padding: 1, Spatial: []int64{8, 8}},
		{Kind: "conv2d", In: 8, Out: 8, Kernel: 3, Stride: 1, Padding: 1},
		{Kind: "conv1d", In: 8, Out: 16, Kernel: 5, Stride: 1, Padding: 2, Spatial: []int64{32}},
		{Kind: "residual", Dim: 32},
		{Kind: "residual", Dim: 16, Spatial: []int64{4, 4}},
		{Kind: "conv2d_pair", In: 3, Mid: 8, Out: 16, Kernel: 3, Stride: 2, Padding: 1, ConsumerKernel: 3,
			ConsumerStride: 1, ConsumerPadding: 1, Activation: "relu", Spatial: []int64{9, 9}},
		{Kind: "conv1d_pair", In: 3, Mid: 8, Out: 16, Kernel: 3, Stride: 1, Padding: 1, ConsumerKernel: 3,
			ConsumerStride: 1, ConsumerPadding: 1, Activation: "gelu", Spatial: []int64{16}},
	}
	n := 0
	for _, tpl := range Templates() {
		for _, h := range hosts {
			if !tpl.Supports(h) {
				continue
			}
			ir, err := tpl.Instantiate(nil, h)
			if err != nil {
				continue // a host too small for the template's defaults
			}
			got, ok := ir.appendCanonical(nil)
			if !ok {
				t.Fatalf("%s on %+v: the direct encoder fell back", tpl.Name, h)
			}
			if want := marshalReference(t, ir); !bytes.Equal(got, want) {
				t.Fatalf("%s on %+v:\n got %s\nwant %s", tpl.Name, h, got, want)
			}
			n++
		}
	}
	if n < len(Templates()) {
		t.Fatalf("compared %d instantiations, fewer than the %d templates", n, len(Templates()))
	}
}

// fillAll sets every field of the struct v points to to a non-zero value
// (strings get characters that need escaping), so that a field added to
// IR, Op or Host later and not written by the direct encoder fails the
// comparison.
func fillAll(t *testing.T, v reflect.Value) {
	t.Helper()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("a<b>&\"c\"\n\u00e9\u2028" + v.Type().Field(i).Name)
		case reflect.Int, reflect.Int64:
			f.SetInt(int64(i + 3))
		case reflect.Slice:
			if f.Type().Elem().Kind() == reflect.Int64 {
				f.Set(reflect.ValueOf([]int64{5, 6}))
			}
		}
	}
}

// TestAppendCanonicalEveryField compares the two encoders on an IR with
// every field of IR, Host and Op set, attributes of each value type, a
// default-valued optional attribute, nil and empty slices.
func TestAppendCanonicalEveryField(t *testing.T) {
	ir := &IR{}
	fillAll(t, reflect.ValueOf(ir).Elem())
	fillAll(t, reflect.ValueOf(&ir.Host).Elem())
	op := Op{}
	fillAll(t, reflect.ValueOf(&op).Elem())
	op.Inputs = []string{"x", "é\t"}
	op.Attrs = Attrs{"z": int64(-1 << 60), "b": true, "f": false, "s": "<tag>", "i": 7, "x": 0.25, "y": 3.0,
		"big": 1e300, "neg0": math.Copysign(0, -1)}
	lin := Op{ID: "fc", Op: OpLinear, Inputs: []string{InputName}, Attrs: Attrs{"in": int64(4), "out": int64(4),
		"bias": true, "init": "default"}}
	nilInputs := Op{ID: "n", Op: "relu"}
	ir.Ops = []Op{op, lin, nilInputs, {ID: "e", Op: "relu", Inputs: []string{}, Attrs: Attrs{}}}
	ir.Params = Params{"width": int64(16), "act": "relu", "on": true, "rate": 0.1}
	got, ok := ir.appendCanonical(nil)
	if !ok {
		t.Fatal("the direct encoder fell back")
	}
	if want := marshalReference(t, ir); !bytes.Equal(got, want) {
		t.Fatalf("\n got %s\nwant %s", got, want)
	}
	if !json.Valid(got) {
		t.Fatalf("invalid JSON: %s", got)
	}
	for _, empty := range []*IR{{}, {Ops: []Op{}, Params: Params{}}} {
		got, ok := empty.appendCanonical(nil)
		if want := marshalReference(t, empty); !ok || !bytes.Equal(got, want) {
			t.Fatalf("empty IR: got %s (ok %v), want %s", got, ok, want)
		}
	}
}

// TestAppendCanonicalFallsBack checks that what the direct encoder does not
// write exactly is left to canon.Marshal, and that Canonical's bytes are
// canon.Marshal's there too.
func TestAppendCanonicalFallsBack(t *testing.T) {
	for name, ir := range map[string]*IR{
		"uint attr":    {Ops: []Op{{ID: "a", Op: "relu", Attrs: Attrs{"k": uint8(3)}}}},
		"nan param":    {Params: Params{"p": math.NaN()}},
		"invalid utf8": {Output: "\xff"},
		"slice attr":   {Ops: []Op{{ID: "a", Op: "relu", Attrs: Attrs{"k": []int{1}}}}},
	} {
		if _, ok := ir.appendCanonical(nil); ok {
			t.Errorf("%s: the direct encoder did not fall back", name)
		}
	}
	ir := &IR{Output: "\xff", Ops: []Op{}}
	got, err := ir.Clone().marshalCanonical()
	if err != nil {
		t.Fatal(err)
	}
	if want := marshalReference(t, ir); !bytes.Equal(got, want) {
		t.Fatalf("fallback: got %s, want %s", got, want)
	}
}
