package blueprint_test

import (
	"errors"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(exampleIR))
	for _, tm := range blueprint.Templates() {
		for _, h := range sampleHosts {
			if ir, err := tm.Instantiate(nil, h); err == nil {
				c, _ := ir.Canonical()
				f.Add(c)
			}
		}
	}
	// Every enum choice of every template (each op family and activation), and
	// hand-written IRs of the factorised, attention and activation ops.
	for _, tm := range blueprint.Templates() {
		for _, p := range tm.Params {
			for _, c := range p.Choices {
				for _, h := range sampleHosts {
					if ir, err := tm.Instantiate(blueprint.Params{p.Name: c}, h); err == nil {
						c, _ := ir.Canonical()
						f.Add(c)
					}
				}
			}
		}
	}
	f.Add([]byte(`{"version":1,"host":{"kind":"linear","in":8,"out":6},"ops":[{"id":"o","op":"kron_linear","inputs":["x"],"attrs":{"in":8,"out":6,"in_factor":2,"out_factor":3,"init":"zero"}}],"output":"o"}`))
	f.Add([]byte(`{"version":1,"host":{"kind":"residual","dim":8},"ops":[{"id":"o","op":"attention","inputs":["x"],"attrs":{"dim":8,"heads":2,"causal":true,"init":"zero"}}],"output":"o"}`))
	f.Add([]byte(`{"version":1,"host":{"kind":"linear","in":8,"out":8},"ops":[` + zeroLin + `,{"id":"o","op":"mish","inputs":["z"]}],"output":"o"}`))
	f.Add([]byte(`{"version":1,"ops":[{"id":"a","op":"relu","inputs":["a"]}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ir, err := blueprint.Parse(data)
		if err != nil {
			if c := errcode.Of(err); c != errcode.Invalid {
				t.Fatalf("Parse error has code %v: %v", c, err)
			}
			return
		}
		// A parsed IR is valid, canonicalises, and its canonical bytes parse
		// back to the same id.
		c, err := ir.Canonical()
		if err != nil {
			t.Fatalf("parsed IR does not canonicalise: %v", err)
		}
		back, err := blueprint.Parse(c)
		if err != nil {
			t.Fatalf("canonical bytes refused: %v\n%s", err, c)
		}
		c2, err := back.Canonical()
		if err != nil || string(c2) != string(c) {
			t.Fatalf("canonical bytes unstable:\n%s\n%s", c, c2)
		}
		if err := blueprint.Check(ir, ir.Host, blueprint.Budget{}); err != nil {
			t.Fatalf("parsed IR fails Check on its own host: %v", err)
		}
	})
}

func FuzzParseHost(f *testing.F) {
	for _, s := range []string{`{"kind":"linear","in":4,"out":2}`, `{"kind":"conv2d","in":3,"out":8,"kernel":3,"stride":2,"padding":1,"spatial":[32,32]}`,
		`{"kind":"residual","dim":8,"spatial":[5]}`, `{"kind":"conv1d"}`, `null`,
		`{"kind":"conv2d_pair","in":3,"mid":8,"out":16,"kernel":3,"stride":2,"padding":1,"consumer_kernel":3,"consumer_stride":1,"consumer_padding":1,"activation":"relu","spatial":[9,9]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := blueprint.ParseHost(data)
		if err != nil {
			if errcode.Of(err) != errcode.Invalid {
				t.Fatalf("code %v: %v", errcode.Of(err), err)
			}
			return
		}
		// Every valid host has shapes, and every template it supports
		// instantiates on it or says why with an Invalid code.
		_ = h.InputShape().String() + h.OutputShape().String()
		for _, tm := range blueprint.Templates() {
			if !tm.Supports(h) {
				continue
			}
			if _, err := tm.Instantiate(nil, h); err != nil && errcode.Of(err) != errcode.Invalid {
				t.Fatalf("%s on %+v: %v", tm.Name, h, err)
			}
		}
	})
}

func FuzzParseParamsAndBudget(f *testing.F) {
	for _, s := range []string{`{"width":8,"activation":"gelu"}`, `{"rank":1e3}`, `{}`, `null`, ``, `{"max_params":10,"max_flops":5}`, `{"a":[1]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := blueprint.ParseParams(data)
		if err == nil {
			for _, tm := range blueprint.Templates() {
				if _, err := tm.Resolve(p); err != nil && !errors.Is(err, blueprint.ErrParam) {
					t.Fatalf("Resolve error does not wrap ErrParam: %v", err)
				}
			}
		} else if errcode.Of(err) != errcode.Invalid {
			t.Fatalf("code %v: %v", errcode.Of(err), err)
		}
		b, err := blueprint.ParseBudget(data)
		if err == nil && (b.MaxParams < 0 || b.MaxFLOPs < 0) {
			t.Fatalf("negative budget accepted: %+v", b)
		}
		if err != nil && errcode.Of(err) != errcode.Invalid {
			t.Fatalf("code %v: %v", errcode.Of(err), err)
		}
	})
}

func TestParseHelpers(t *testing.T) {
	if p, err := blueprint.ParseParams([]byte(" ")); err != nil || p != nil {
		t.Fatalf("empty params = %v, %v", p, err)
	}
	p, err := blueprint.ParseParams([]byte(`{"width":8.0,"activation":"gelu"}`))
	if err != nil || p["width"] != int64(8) {
		t.Fatalf("params = %#v, %v", p, err)
	}
	_, err = blueprint.ParseParams([]byte(`{"width":8.5}`))
	wantErr(t, err, blueprint.ErrInvalid, errcode.Invalid, "params.width")
	_, err = blueprint.ParseHost([]byte(`{"kind":"linear","in":4,"out":2,"bias":true}`))
	wantErr(t, err, blueprint.ErrInvalid, errcode.Invalid, "bias")
	_, err = blueprint.ParseBudget([]byte(`{"max_params":-3}`))
	wantErr(t, err, blueprint.ErrInvalid, errcode.Invalid, ">= 0")
	b, err := blueprint.ParseBudget([]byte(`null`))
	if err != nil || b != (blueprint.Budget{}) {
		t.Fatalf("null budget = %+v, %v", b, err)
	}
}

// FuzzInstantiate drives every template with arbitrary parameter values on
// every sample host: an instance is valid, within its own counts and stable
// through its canonical form; a refusal has code Invalid (NotFound cannot
// happen: the name comes from the library).
func FuzzInstantiate(f *testing.F) {
	f.Add(uint8(0), uint8(0), int64(4), uint8(0))
	f.Add(uint8(5), uint8(1), int64(1), uint8(2))
	f.Add(uint8(6), uint8(3), int64(1024), uint8(1))
	f.Add(uint8(9), uint8(4), int64(-3), uint8(7))
	templates := blueprint.Templates()
	layouts := []string{blueprint.LayoutLinear, blueprint.LayoutResidual, blueprint.LayoutConv2d, blueprint.LayoutResidual2d,
		blueprint.LayoutConv1d, blueprint.LayoutResidual1d}
	f.Fuzz(func(t *testing.T, ti, li uint8, n int64, choice uint8) {
		tm := templates[int(ti)%len(templates)]
		host := sampleHosts[layouts[int(li)%len(layouts)]]
		p := blueprint.Params{}
		for i, s := range tm.Params {
			switch s.Kind {
			case blueprint.ParamInt:
				p[s.Name] = n + int64(i)
			case blueprint.ParamEnum:
				p[s.Name] = s.Choices[(int(choice)+i)%len(s.Choices)]
			}
		}
		ir, err := tm.Instantiate(p, host)
		if err != nil {
			if errcode.Of(err) != errcode.Invalid {
				t.Fatalf("%s %v: code %v: %v", tm.Name, p, errcode.Of(err), err)
			}
			return
		}
		c, err := ir.Canonical()
		if err != nil {
			t.Fatalf("%s %v: %v", tm.Name, p, err)
		}
		back, err := blueprint.Parse(c)
		if err != nil {
			t.Fatalf("%s %v: canonical form refused: %v", tm.Name, p, err)
		}
		if back.ParamCount != ir.ParamCount || back.FLOPsPerSample != ir.FLOPsPerSample {
			t.Fatalf("%s %v: counts changed through Parse", tm.Name, p)
		}
	})
}
