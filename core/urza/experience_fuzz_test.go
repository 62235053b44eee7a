package urza_test

import (
	"testing"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/urza"
)

// FuzzParseExperience: no input panics the parser, and a record it accepts
// is accepted again as it would be stored (canonical JSON, schema stamped).
func FuzzParseExperience(f *testing.F) {
	f.Add(experience(f, "ppo-a", "policy", 1, nil))
	f.Add(experience(f, "ppo-a", "heuristic", 3, nil))
	f.Add(experience(f, "ppo-a", "policy", 1, map[string]any{"reward": nil}))
	f.Add([]byte(`{"trainer_run":"x","episode":1,"mode":"policy","spec":null,"run":{},"steps":[{}]}`))
	f.Add([]byte(`{"steps":[{"graph":{},"action":{"op":null}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := urza.ParseExperience(data)
		if err != nil {
			return
		}
		b, err := canon.Marshal(e)
		if err != nil {
			t.Fatalf("accepted record does not marshal: %v", err)
		}
		again, err := urza.ParseExperience(b)
		if err != nil {
			t.Fatalf("stored form of an accepted record refused: %v\n%s", err, b)
		}
		if again.Name() != e.Name() || again.Schema != urza.ExperienceSchema {
			t.Fatalf("round trip changed the record: %s -> %s", e.Name(), again.Name())
		}
	})
}
