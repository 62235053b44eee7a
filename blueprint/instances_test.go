package blueprint_test

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/canon"
)

func mustLookup(tb testing.TB, name string) blueprint.Template {
	tb.Helper()
	t, err := blueprint.Lookup(name)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

// TestInstancesMemo asks one memo for instances in turn: each answer must
// equal a fresh Instantiate of the same arguments, and be the kept IR (the
// same pointer) exactly when an earlier request had the same template,
// parameters and host; a different template, size or host must not hit
// the kept entry.
func TestInstancesMemo(t *testing.T) {
	linear := blueprint.Host{Kind: "linear", In: 64, Out: 64}
	narrow := blueprint.Host{Kind: "linear", In: 32, Out: 64}
	mlp, lowrank := mustLookup(t, "residual_mlp"), mustLookup(t, "lowrank")
	var m blueprint.Instances
	type req struct {
		name   string
		t      blueprint.Template
		params blueprint.Params
		host   blueprint.Host
		// same names the earlier request whose kept IR this one must get
		// ("" for a miss); kept says the memo keeps the answer.
		same string
		kept bool
	}
	reqs := []req{
		{"first", mlp, blueprint.Params{"width": 32}, linear, "", true},
		{"again", mlp, blueprint.Params{"width": 32}, linear, "first", true},
		{"int64 of the same size", mlp, blueprint.Params{"width": int64(32)}, linear, "first", true},
		{"other size", mlp, blueprint.Params{"width": 16}, linear, "", true},
		{"other parameter value", mlp, blueprint.Params{"width": 32, "activation": "gelu"}, linear, "", true},
		{"defaults", mlp, nil, linear, "", true},
		{"other template", lowrank, nil, linear, "", true},
		{"other host", mlp, blueprint.Params{"width": 32}, narrow, "", true},
		{"other host again", mlp, blueprint.Params{"width": 32}, narrow, "other host", true},
		{"first once more", mlp, blueprint.Params{"width": 32}, linear, "first", true},
		{"a parameter of another kind", mlp, blueprint.Params{"width": 32.0}, linear, "", false},
	}
	got := map[string]*blueprint.IR{}
	for _, r := range reqs {
		ir, err := m.Instantiate(r.t, r.params, r.host)
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		fresh, err := r.t.Instantiate(r.params, r.host)
		if err != nil {
			t.Fatalf("%s: fresh: %v", r.name, err)
		}
		if !reflect.DeepEqual(ir, fresh) {
			t.Fatalf("%s: memo answered %+v, Instantiate %+v", r.name, ir, fresh)
		}
		for name, prev := range got {
			if hit := prev == ir; hit != (name == r.same) {
				t.Fatalf("%s: shares the IR of %q: %v, want %v", r.name, name, hit, name == r.same)
			}
		}
		if _, _, ok, _ := m.Canonical(ir); ok != r.kept {
			t.Fatalf("%s: kept %v, want %v", r.name, ok, r.kept)
		}
		if r.same == "" {
			got[r.name] = ir
		}
	}
	if n := m.Len(); n != 6 {
		t.Fatalf("Len = %d, want the 6 distinct requests kept", n)
	}
	if _, err := m.Instantiate(mlp, blueprint.Params{"width": 0}, linear); err == nil {
		t.Fatal("width 0 instantiated")
	}
	if _, err := m.Instantiate(mlp, blueprint.Params{"width": 32}, blueprint.Host{Kind: "linear"}); err == nil {
		t.Fatal("an invalid host instantiated")
	}
	if n := m.Len(); n != 6 {
		t.Fatalf("errors were kept: Len = %d", n)
	}
}

// TestInstancesCanonical checks the document and id the memo keeps against
// IR.Canonical and IR.ID of the same IR, and that an IR it did not hand
// out, identical or not, is not answered from it.
func TestInstancesCanonical(t *testing.T) {
	var m blueprint.Instances
	host := blueprint.Host{Kind: "linear", In: 64, Out: 64}
	mlp := mustLookup(t, "residual_mlp")
	ir, err := m.Instantiate(mlp, blueprint.Params{"width": 24}, host)
	if err != nil {
		t.Fatal(err)
	}
	want, err := ir.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	wantID, err := ir.ID()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		doc, id, ok, err := m.Canonical(ir)
		if err != nil || !ok || !bytes.Equal(doc, want) || id != wantID {
			t.Fatalf("call %d: Canonical = %s, %s, %v, %v; want %s, %s", i, doc, id, ok, err, want, wantID)
		}
		doc[0] = 'X' // the caller's copy: the kept document must not change
	}
	twin, err := mlp.Instantiate(blueprint.Params{"width": 24}, host)
	if err != nil {
		t.Fatal(err)
	}
	if doc, _, ok, err := m.Canonical(twin); ok || doc != nil || err != nil {
		t.Fatalf("an identical IR the memo did not make was answered: %v, %v", ok, err)
	}
	var empty blueprint.Instances
	if _, _, ok, _ := empty.Canonical(ir); ok {
		t.Fatal("an empty memo answered")
	}
}

// TestInstancesBounded fills a memo past MaxInstances: it keeps that many,
// and answers the rest correctly without keeping them.
func TestInstancesBounded(t *testing.T) {
	var m blueprint.Instances
	mlp := mustLookup(t, "residual_mlp")
	host := blueprint.Host{Kind: "linear", In: 8, Out: 8}
	for w := 1; w <= blueprint.MaxInstances+5; w++ {
		ir, err := m.Instantiate(mlp, blueprint.Params{"width": w}, host)
		if err != nil {
			t.Fatal(err)
		}
		if got := ir.Params["width"]; got != int64(w) {
			t.Fatalf("width %d answered with width %v", w, got)
		}
		if _, _, ok, _ := m.Canonical(ir); ok != (w <= blueprint.MaxInstances) {
			t.Fatalf("width %d kept: %v", w, ok)
		}
	}
	if n := m.Len(); n != blueprint.MaxInstances {
		t.Fatalf("Len = %d, want %d", n, blueprint.MaxInstances)
	}
}

// BenchmarkInstances measures what a germination's blueprint costs the
// session: the template instantiated for the host, then its canonical
// document and id, without a memo ("fresh": Instantiate, CanonicalComplete,
// canon.ID) and from a memo that holds the instance ("kept").
func BenchmarkInstances(b *testing.B) {
	host := blueprint.Host{Kind: "linear", In: 64, Out: 64}
	mlp := mustLookup(b, "residual_mlp")
	params := blueprint.Params{"width": 32}
	b.Run("fresh", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			ir, err := mlp.Instantiate(params, host)
			if err != nil {
				b.Fatal(err)
			}
			doc, err := ir.CanonicalComplete()
			if err != nil {
				b.Fatal(err)
			}
			_ = canon.ID(doc)
		}
	})
	b.Run("kept", func(b *testing.B) {
		var m blueprint.Instances
		b.ReportAllocs()
		for range b.N {
			ir, err := m.Instantiate(mlp, params, host)
			if err != nil {
				b.Fatal(err)
			}
			if _, _, ok, err := m.Canonical(ir); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
}
