package canon_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
)

func TestCanonicalize(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"sorted keys", `{"b":1,"a":2}`, `{"a":2,"b":1}`},
		{"nested and whitespace", "{ \"z\" : [ 1 , {\"y\":true,\"x\":null} ] ,\n\"a\":\"s\" }", `{"a":"s","z":[1,{"x":null,"y":true}]}`},
		{"integral float", `[1.0, 1e0, -0, 2.50, 100e-2]`, `[1,1,0,2.5,1]`},
		{"big int kept exact", `9223372036854775807`, `9223372036854775807`},
		{"beyond int64", `12345678901234567890`, `1.2345678901234567e+19`},
		{"large float", `1e21`, `1e+21`},
		{"small float", `0.000001`, `1e-06`},
		{"unicode kept", `"héllo \u00e9 \u2028"`, "\"héllo é \u2028\""},
		{"control escaped", `"a\u0001b\n\t"`, `"a\u0001b\n\t"`},
		{"no html escape", `"<a>&"`, `"<a>&"`},
		{"escaped quote", `"q\"\\"`, `"q\"\\"`},
		{"escapes decoded", `"\/\b\f\u0041\u00e9"`, "\"/\\b\\fA\u00e9\""},
		{"surrogate pair", `"\ud83d\ude00"`, "\"\U0001F600\""},
		{"lone surrogate", `"\ud800x"`, "\"\uFFFDx\""},
		{"escaped key sorts by its bytes", `{"a\u0062":1,"aa":2}`, `{"aa":2,"ab":1}`},
		{"key bytes order", `{"b":0,"B":1,"a":2}`, `{"B":1,"a":2,"b":0}`},
		{"empty containers", `{"a":[],"b":{}}`, `{"a":[],"b":{}}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := canon.Canonicalize([]byte(tc.in))
			if err != nil {
				t.Fatalf("Canonicalize(%s): %v", tc.in, err)
			}
			if string(got) != tc.want {
				t.Fatalf("Canonicalize(%s) = %s, want %s", tc.in, got, tc.want)
			}
			again, err := canon.Canonicalize(got)
			if err != nil || string(again) != string(got) {
				t.Fatalf("not idempotent: %s -> %s (%v)", got, again, err)
			}
		})
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	nested := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	if _, err := canon.Canonicalize([]byte(nested(canon.MaxDepth))); err != nil {
		t.Fatalf("%d nested arrays refused: %v", canon.MaxDepth, err)
	}
	cases := []struct {
		name, in string
	}{
		{"empty", ``},
		{"duplicate key", `{"a":1,"a":2}`},
		{"nested duplicate", `[{"x":{"k":1,"k":1}}]`},
		{"trailing", `{} {}`},
		{"trailing garbage", `1 x`},
		{"truncated", `{"a":[1,2`},
		{"missing comma", `[1 2]`},
		{"bad utf8", "\"\xff\""},
		{"out of range", `1e999`},
		{"too deep", nested(canon.MaxDepth + 1)},
		{"single quote", `{'a':1}`},
		{"leading zero", `01`},
		{"bare minus", `-`},
		{"no fraction digit", `1.`},
		{"no exponent digit", `1e+`},
		{"bad escape", `"\x"`},
		{"short unicode escape", `"\u12"`},
		{"raw control character", "\"a\nb\""},
		{"missing colon", `{"a" 1}`},
		{"trailing comma", `[1,]`},
		{"key not a string", `{1:2}`},
		{"truncated literal", `tru`},
		{"unterminated string", `"abc`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := canon.Canonicalize([]byte(tc.in))
			if !errors.Is(err, canon.ErrSyntax) {
				t.Fatalf("Canonicalize(%q) error = %v, want ErrSyntax", tc.in, err)
			}
			if errcode.Of(err) != errcode.Invalid {
				t.Fatalf("code = %v, want INVALID", errcode.Of(err))
			}
		})
	}
}

func TestMarshalAndID(t *testing.T) {
	v := map[string]any{"b": []int{3, 1}, "a": "x"}
	b, err := canon.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"a":"x","b":[3,1]}` {
		t.Fatalf("Marshal = %s", b)
	}
	id := canon.ID(b)
	if !canon.IsID(id) {
		t.Fatalf("ID %q is not an id", id)
	}
	// sha256 of the empty string, a known vector.
	if got := canon.ID(nil); got != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" {
		t.Fatalf("ID(nil) = %s", got)
	}
	for _, s := range []string{"", "abc", id[:63], id + "0", "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"} {
		if canon.IsID(s) {
			t.Fatalf("IsID(%q) = true", s)
		}
	}
}

func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{`{"b":1,"a":[1.5,"x",null,true]}`, `1e21`, `"\u0000"`, `{"a":{"a":{}}}`, `[1,2,3]`, `-0.0`, `{"a":1,"a":1}`,
		`"\ud83d\ude00 \ud800x \udc00\ud800"`, `{"a\u0062":1,"ab":2}`, ` [ 01 ] `, `[1.]`, `[-]`, `[1e+]`, `"a\x"`, `{"a" 1}`, `[1,]`, `tru`, `nul`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := canon.Canonicalize(data)
		want, refErr := canon.ReferenceCanonicalize(data)
		if (err == nil) != (refErr == nil) || string(got) != string(want) {
			t.Fatalf("Canonicalize(%q) = %q, %v; the encoding/json reference gives %q, %v", data, got, err, want, refErr)
		}
		if err != nil {
			if !errors.Is(err, canon.ErrSyntax) {
				t.Fatalf("error does not wrap ErrSyntax: %v", err)
			}
			return
		}
		if !json.Valid(got) {
			t.Fatalf("canonical output is not valid JSON: %q", got)
		}
		again, err := canon.Canonicalize(got)
		if err != nil {
			t.Fatalf("canonical output refused: %q: %v", got, err)
		}
		if string(again) != string(got) {
			t.Fatalf("not idempotent:\n%q\n%q", got, again)
		}
		// Same meaning as the input (numbers compared as float64).
		var a, b any
		if json.Unmarshal(data, &a) == nil && json.Unmarshal(got, &b) == nil && !reflect.DeepEqual(a, b) {
			t.Fatalf("meaning changed:\n%q\n%q", data, got)
		}
	})
}

func TestDecodeStrict(t *testing.T) {
	type doc struct {
		A int64          `json:"a"`
		M map[string]any `json:"m"`
	}
	var d doc
	if err := canon.DecodeStrict([]byte(`{"a":3,"m":{"k":1.5}}`), &d); err != nil || d.A != 3 {
		t.Fatalf("DecodeStrict = %+v, %v", d, err)
	}
	if _, ok := d.M["k"].(json.Number); !ok {
		t.Fatalf("interface number is %T, want json.Number", d.M["k"])
	}
	for _, tc := range []struct {
		doc  string
		want error
	}{
		{`{"a":1,"b":2}`, canon.ErrSchema}, {`{"a":"x"}`, canon.ErrSchema}, {`[1]`, canon.ErrSchema},
		{`{"a":1,"a":2}`, canon.ErrSyntax}, {`{"a":1} 1`, canon.ErrSyntax}, {`{"a":`, canon.ErrSyntax},
	} {
		var d doc
		err := canon.DecodeStrict([]byte(tc.doc), &d)
		if !errors.Is(err, tc.want) || errcode.Of(err) != errcode.Invalid {
			t.Fatalf("DecodeStrict(%s) = %v, want %v", tc.doc, err, tc.want)
		}
	}
	var d2 doc
	if err := canon.DecodeStrict([]byte(`{"a":"x"}`), &d2); err == nil || !strings.Contains(err.Error(), `field "a"`) {
		t.Fatalf("type error does not name the field: %v", err)
	}
}

// BenchmarkCanonicalize canonicalises a seed blueprint's IR (about 400
// bytes), as every germination does.
func BenchmarkCanonicalize(b *testing.B) {
	doc := []byte(`{"version":1,"template":"residual_mlp","params":{"width":32},"host":{"kind":"linear","in":16,"out":16},` +
		`"inputs":[{"name":"x","shape":[-1,16]}],"ops":[{"op":"linear","inputs":["x"],"output":"h","attrs":{"in":16,"out":32,"bias":true}},` +
		`{"op":"relu","inputs":["h"],"output":"a"},{"op":"linear","inputs":["a"],"output":"y","attrs":{"in":32,"out":16,"bias":true,"init":"zeros"}}],"output":"y"}`)
	b.ReportAllocs()
	for range b.N {
		if _, err := canon.Canonicalize(doc); err != nil {
			b.Fatal(err)
		}
	}
}
