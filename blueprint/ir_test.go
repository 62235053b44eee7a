package blueprint_test

import (
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
)

// exampleIR is the example of docs/internals.md with Karn's counts.
const exampleIR = `{
  "version": 1,
  "template": "residual_mlp",
  "params": {"width": 16, "activation": "relu"},
  "host": {"kind": "linear", "in": 64, "out": 10},
  "ops": [
    {"id": "fc1", "op": "linear", "inputs": ["x"], "attrs": {"in": 64, "out": 16, "bias": true}},
    {"id": "act", "op": "relu",   "inputs": ["fc1"]},
    {"id": "fc2", "op": "linear", "inputs": ["act"], "attrs": {"in": 16, "out": 10, "bias": true, "init": "zero"}}
  ],
  "output": "fc2",
  "param_count": 1210,
  "flops_per_sample": 2410
}`

func TestParseExample(t *testing.T) {
	ir, err := blueprint.Parse([]byte(exampleIR))
	if err != nil {
		t.Fatal(err)
	}
	if ir.ParamCount != 1210 || ir.FLOPsPerSample != 2410 {
		t.Fatalf("counts = %d, %d", ir.ParamCount, ir.FLOPsPerSample)
	}
	// The template builds the same IR, so it has the same id.
	built := mustInstantiate(t, "residual_mlp", blueprint.Params{"width": 16}, blueprint.Host{Kind: "linear", In: 64, Out: 10})
	id1, err := ir.ID()
	if err != nil {
		t.Fatal(err)
	}
	id2, err := built.ID()
	if err != nil {
		t.Fatal(err)
	}
	if id1 != id2 {
		c1, _ := ir.Canonical()
		c2, _ := built.Canonical()
		t.Fatalf("ids differ:\n%s\n%s", c1, c2)
	}
}

func TestParseFillsCounts(t *testing.T) {
	doc := strings.Replace(exampleIR, `"param_count": 1210,`, ``, 1)
	doc = strings.Replace(doc, `,
  "flops_per_sample": 2410`, ``, 1)
	ir, err := blueprint.Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if ir.ParamCount != 1210 || ir.FLOPsPerSample != 2410 {
		t.Fatalf("counts = %d, %d", ir.ParamCount, ir.FLOPsPerSample)
	}
}

func TestCanonicalID(t *testing.T) {
	ir, err := blueprint.Parse([]byte(exampleIR))
	if err != nil {
		t.Fatal(err)
	}
	c, err := ir.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	if strings.ContainsAny(string(c), " \n") {
		t.Fatalf("canonical bytes hold whitespace: %s", c)
	}
	if !strings.HasPrefix(string(c), `{"flops_per_sample":2410,"host":{"in":64,"kind":"linear","out":10},"ops":[`) {
		t.Fatalf("canonical bytes are not sorted: %s", c)
	}
	// Reordered keys, whitespace and an explicit default init give the same id.
	reordered := `{"output":"fc2","ops":[{"attrs":{"bias":true,"out":16,"in":64,"init":"default"},"inputs":["x"],"op":"linear","id":"fc1"},
	  {"inputs":["fc1"],"id":"act","op":"relu"},{"op":"linear","id":"fc2","inputs":["act"],"attrs":{"init":"zero","out":10,"in":16,"bias":true}}],
	  "params":{"activation":"relu","width":16.0},"host":{"out":10,"in":64,"kind":"linear"},"template":"residual_mlp","version":1}`
	ir2, err := blueprint.Parse([]byte(reordered))
	if err != nil {
		t.Fatal(err)
	}
	id1, _ := ir.ID()
	id2, _ := ir2.ID()
	if id1 != id2 {
		t.Fatalf("equivalent IRs have ids %s and %s", id1, id2)
	}
	// Canonical bytes parse back to the same canonical bytes.
	ir3, err := blueprint.Parse(c)
	if err != nil {
		t.Fatal(err)
	}
	c3, _ := ir3.Canonical()
	if string(c3) != string(c) {
		t.Fatalf("round trip changed canonical bytes:\n%s\n%s", c, c3)
	}
	// A different IR has a different id.
	other := mustInstantiate(t, "residual_mlp", blueprint.Params{"width": 17}, ir.Host)
	if id, _ := other.ID(); id == id1 {
		t.Fatal("different IRs share an id")
	}
}

func TestParseRejects(t *testing.T) {
	op := func(s string) string {
		return `{"version":1,"host":{"kind":"linear","in":4,"out":4},"ops":[` + s + `],"output":"o"}`
	}
	zeroLin := `{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}}`
	cases := []struct {
		name     string
		doc      string
		sentinel error
		frags    []string
	}{
		{"not json", `{`, blueprint.ErrInvalid, nil},
		{"unknown top field", `{"version":1,"extra":1}`, blueprint.ErrInvalid, []string{"extra"}},
		{"unknown op field", op(`{"id":"o","op":"linear","inputs":["x"],"attrz":{}}`), blueprint.ErrInvalid, []string{"attrz"}},
		{"unknown host field", `{"version":1,"host":{"kind":"linear","in":4,"out":4,"depth":3},"ops":[` + zeroLin + `],"output":"o"}`, blueprint.ErrInvalid, []string{"depth"}},
		{"duplicate key", `{"version":1,"version":1}`, blueprint.ErrInvalid, []string{"duplicate"}},
		{"trailing", op(zeroLin) + `{}`, blueprint.ErrInvalid, []string{"trailing"}},
		{"wrong type", `{"version":"1"}`, blueprint.ErrInvalid, []string{"version"}},
		{"version", `{"version":2,"host":{"kind":"linear","in":4,"out":4},"ops":[` + zeroLin + `],"output":"o"}`, blueprint.ErrInvalid, []string{"version 2"}},
		{"float attr", op(`{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":4.5,"out":4,"bias":false}}`), blueprint.ErrInvalid, []string{`"in"`, "4.5"}},
		{"unknown op", op(`{"id":"o","op":"conv3d","inputs":["x"]}`), blueprint.ErrUnknownOp, []string{"conv3d", `"o"`}},
		{"missing attr", op(`{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4}}`), blueprint.ErrAttr, []string{`missing attribute "bias"`, `"o"`}},
		{"unknown attr", op(`{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"dropout":1}}`), blueprint.ErrAttr, []string{`"dropout"`}},
		{"bad attr value", op(`{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":0,"out":4,"bias":false}}`), blueprint.ErrAttr, []string{`"in"`, ">= 1"}},
		{"bad init", op(`{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"ones"}}`), blueprint.ErrAttr, []string{`"init"`}},
		{"arity", op(`{"id":"o","op":"add","inputs":["x"]}`), blueprint.ErrGraph, []string{"takes 2 input"}},
		{"missing input", op(`{"id":"o","op":"linear","inputs":["y"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}}`), blueprint.ErrGraph, []string{`"y"`}},
		{"self loop", op(`{"id":"o","op":"relu","inputs":["o"]}`), blueprint.ErrGraph, []string{"own output"}},
		{"cycle", op(`{"id":"a","op":"relu","inputs":["o"]},{"id":"o","op":"mul","inputs":["a","x"]}`), blueprint.ErrGraph, []string{"cycle", "a, o"}},
		{"no output", `{"version":1,"host":{"kind":"linear","in":4,"out":4},"ops":[` + zeroLin + `]}`, blueprint.ErrGraph, []string{"output is not set"}},
		{"output unknown", `{"version":1,"host":{"kind":"linear","in":4,"out":4},"ops":[` + zeroLin + `],"output":"z"}`, blueprint.ErrGraph, []string{`"z"`}},
		{"dead op", op(zeroLin + `,{"id":"d","op":"relu","inputs":["x"]}`), blueprint.ErrGraph, []string{`"d" does not reach`}},
		{"duplicate id", op(zeroLin + `,` + zeroLin), blueprint.ErrGraph, []string{"duplicate op id"}},
		{"bad id", op(`{"id":"a.b","op":"relu","inputs":["x"]}`), blueprint.ErrGraph, []string{`"a.b"`}},
		{"input name as id", op(`{"id":"x","op":"relu","inputs":["x"]}`), blueprint.ErrGraph, nil},
		{"no ops", `{"version":1,"host":{"kind":"linear","in":4,"out":4},"ops":[],"output":"o"}`, blueprint.ErrGraph, []string{"no ops"}},
		{"shape into op", op(`{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":5,"out":4,"bias":false,"init":"zero"}}`), blueprint.ErrShape, []string{`op "o" (linear)`, "expects 5 features", "(*, 4)"}},
		{"output shape", op(`{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":4,"out":3,"bias":false,"init":"zero"}}`), blueprint.ErrShape, []string{"(*, 3)", "(*, 4)"}},
		{"conv on linear host", op(`{"id":"o","op":"conv2d","inputs":["x"],"attrs":{"in":4,"out":4,"kernel":1,"stride":1,"padding":0,"groups":1,"bias":false,"init":"zero"}}`), blueprint.ErrShape, []string{"channel-first"}},
		{"not zero at init", op(`{"id":"o","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":true}}`), blueprint.ErrNotZeroInit, []string{`"o"`}},
		{"sigmoid not zero", op(`{"id":"z","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}},{"id":"o","op":"sigmoid","inputs":["z"]}`), blueprint.ErrNotZeroInit, nil},
		{"bad host", `{"version":1,"host":{"kind":"linear","in":4},"ops":[` + zeroLin + `],"output":"o"}`, blueprint.ErrHost, []string{"out = 0"}},
		{"host extra field", `{"version":1,"host":{"kind":"linear","in":4,"out":4,"kernel":3},"ops":[` + zeroLin + `],"output":"o"}`, blueprint.ErrHost, []string{"no field kernel"}},
		{"stale param_count", strings.Replace(exampleIR, "1210", "1211", 1), blueprint.ErrInvalid, []string{"1211", "1210"}},
		{"stale flops", strings.Replace(exampleIR, "2410", "2400", 1), blueprint.ErrInvalid, []string{"2400", "2410"}},
		{"too large", `{"version":1,"template":"` + strings.Repeat("a", blueprint.MaxIRBytes) + `"}`, blueprint.ErrInvalid, []string{"limit"}},
		{"param object", strings.Replace(exampleIR, `"width": 16`, `"width": {"a":1}`, 1), blueprint.ErrInvalid, []string{"params.width"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := blueprint.Parse([]byte(tc.doc))
			wantErr(t, err, tc.sentinel, errcode.Invalid, tc.frags...)
		})
	}
}

func TestZeroInitAnalysis(t *testing.T) {
	h := `"host":{"kind":"linear","in":4,"out":4}`
	cases := []struct {
		name string
		ops  string
		ok   bool
	}{
		{"mul by zero branch", `{"id":"z","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}},{"id":"g","op":"sigmoid","inputs":["x"]},{"id":"o","op":"mul","inputs":["g","z"]}`, true},
		{"add of zeros", `{"id":"a","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}},{"id":"b","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":true,"init":"zero"}},{"id":"o","op":"add","inputs":["a","b"]}`, true},
		{"add with non-zero", `{"id":"a","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}},{"id":"o","op":"add","inputs":["a","x"]}`, false},
		{"no-bias linear of zero", `{"id":"a","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}},{"id":"o","op":"linear","inputs":["a"],"attrs":{"in":4,"out":4,"bias":false}}`, true},
		{"biased linear of zero", `{"id":"a","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}},{"id":"o","op":"linear","inputs":["a"],"attrs":{"in":4,"out":4,"bias":true}}`, false},
		{"tanh of zero", `{"id":"a","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}},{"id":"o","op":"tanh","inputs":["a"]}`, true},
		{"layernorm of zero", `{"id":"a","op":"linear","inputs":["x"],"attrs":{"in":4,"out":4,"bias":false,"init":"zero"}},{"id":"o","op":"layernorm","inputs":["a"],"attrs":{"dim":4}}`, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := blueprint.Parse([]byte(`{"version":1,` + h + `,"ops":[` + tc.ops + `],"output":"o"}`))
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok {
				wantErr(t, err, blueprint.ErrNotZeroInit, errcode.Invalid)
			}
		})
	}
}

func TestAnalyzeShapes(t *testing.T) {
	ir := mustInstantiate(t, "conv3x3", blueprint.Params{"width": 8}, sampleHosts[blueprint.LayoutConv2d])
	a, err := blueprint.Analyze(ir, ir.Host)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Shapes["conv1"].String(); got != "(N, 8, floor((H+1)/2), floor((W+1)/2))" {
		t.Fatalf("conv1 shape = %s", got)
	}
	if got := a.Input.String(); got != "(N, 16, H, W)" {
		t.Fatalf("input = %s", got)
	}
	if strings.Join(a.Order, ",") != "conv1,act,conv2" {
		t.Fatalf("order = %v", a.Order)
	}
	if a.Mergeable {
		t.Fatal("conv3x3 reported mergeable")
	}
}

func TestOpNames(t *testing.T) {
	want := "add,attention,avgpool_spatial,conv1d,conv2d,elu,gelu,groupnorm,hardswish,kron_linear,layernorm,leaky_relu,linear,mish,mul,relu,sigmoid,silu,tanh"
	if got := strings.Join(blueprint.OpNames(), ","); got != want {
		t.Fatalf("OpNames = %s", got)
	}
}

func TestGroupNormAndAttentionOps(t *testing.T) {
	conv := `{"version":1,"host":{"kind":"conv2d","in":8,"out":8,"kernel":3,"stride":1,"padding":1},"ops":[
	  {"id":"n","op":"groupnorm","inputs":["x"],"attrs":{"groups":GROUPS,"channels":8}},
	  {"id":"o","op":"conv2d","inputs":["n"],"attrs":{"in":8,"out":8,"kernel":3,"stride":1,"padding":1,"groups":1,"bias":true,"init":"zero"}}],"output":"o"}`
	ir, err := blueprint.Parse([]byte(strings.Replace(conv, "GROUPS", "4", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(16 + 8*8*9 + 8); ir.ParamCount != want {
		t.Fatalf("param_count = %d, want %d", ir.ParamCount, want)
	}
	_, err = blueprint.Parse([]byte(strings.Replace(conv, "GROUPS", "3", 1)))
	wantErr(t, err, blueprint.ErrAttr, errcode.Invalid, `op "n" (groupnorm)`, "divisible by groups 3")

	_, err = blueprint.Instantiate("attention_head", blueprint.Params{"heads": 3}, blueprint.Host{Kind: "residual", Dim: 32})
	wantErr(t, err, blueprint.ErrAttr, errcode.Invalid, "divisible by heads 3")
}

// TestCanonicalCompleteEqualsCanonical: an instantiated IR recorded without
// a second analysis has the bytes (and so the id) Canonical gives, for every
// template on every host it supports; an IR without counts is analysed.
func TestCanonicalCompleteEqualsCanonical(t *testing.T) {
	hosts := []blueprint.Host{
		{Kind: "linear", In: 64, Out: 10},
		{Kind: "conv2d", In: 8, Out: 16, Kernel: 3, Stride: 2, Padding: 1},
		{Kind: "residual", Dim: 32},
	}
	checked := 0
	for _, tpl := range blueprint.Templates() {
		for _, host := range hosts {
			if !tpl.Supports(host) {
				continue
			}
			ir, err := tpl.Instantiate(nil, host)
			if err != nil {
				t.Fatalf("%s on %+v: %v", tpl.Name, host, err)
			}
			want, err := ir.Canonical()
			if err != nil {
				t.Fatal(err)
			}
			got, err := ir.CanonicalComplete()
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Fatalf("%s on %+v: CanonicalComplete\n%s\nwant\n%s", tpl.Name, host, got, want)
			}
			checked++
		}
	}
	if checked < 3 {
		t.Fatalf("only %d template/host pairs checked", checked)
	}
	bare, err := blueprint.Parse([]byte(exampleIR))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := bare.Canonical()
	bare.ParamCount, bare.FLOPsPerSample = 0, 0
	got, err := bare.CanonicalComplete()
	if err != nil || string(got) != string(want) {
		t.Fatalf("uncounted IR: %s, %v; want %s", got, err, want)
	}
}
