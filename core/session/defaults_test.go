package session

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestDefaultConfigRoundTrip checks that the defaults published to Python
// are the ones a session applies: a configuration that spells every default
// out from DefaultConfig's JSON fills in to the same settings as one that
// gives only its layers, and a changed default does not (the control).
func TestDefaultConfigRoundTrip(t *testing.T) {
	def, err := DefaultConfig()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := json.Marshal(def)
	if err != nil {
		t.Fatal(err)
	}
	layers := `[{"name": "fc", "kind": "linear", "in": 8, "out": 4}]`
	bare, err := ParseConfig([]byte(`{"layers": ` + layers + `}`))
	if err != nil {
		t.Fatal(err)
	}
	want, err := bare.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		edit  func(m map[string]any)
		equal bool
	}{
		{"every default spelled out", func(map[string]any) {}, true},
		{"train_steps changed", func(m map[string]any) { m["train_steps"] = want.TrainSteps + 1 }, false},
		{"patience changed", func(m map[string]any) {
			m["controller"].(map[string]any)["patience"] = want.Controller.Patience + 1
		}, false},
		{"cooldown changed", func(m map[string]any) {
			m["governor"].(map[string]any)["cooldown_epochs"] = *want.Governor.CooldownEpochs + 1
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m map[string]any
			if err := json.Unmarshal(doc, &m); err != nil {
				t.Fatal(err)
			}
			tc.edit(m)
			var l []any
			if err := json.Unmarshal([]byte(layers), &l); err != nil {
				t.Fatal(err)
			}
			m["layers"] = l
			spelled, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			c, err := ParseConfig(spelled)
			if err != nil {
				t.Fatalf("DefaultConfig's JSON does not parse back: %v", err)
			}
			got, err := c.WithDefaults()
			if err != nil {
				t.Fatal(err)
			}
			if eq := reflect.DeepEqual(got, want); eq != tc.equal {
				t.Fatalf("equal = %v, want %v:\n got %+v\nwant %+v", eq, tc.equal, got, want)
			}
		})
	}
}
