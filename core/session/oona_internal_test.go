package session

import (
	"encoding/json"
	"math"
	"reflect"
	"testing"

	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// The epoch event's hand-written encoder writes the bytes encoding/json
// writes, for every field set and for the optional ones left out.
func TestEpochDataEncodesAsEncodingJSON(t *testing.T) {
	var all Counters
	v := reflect.ValueOf(&all).Elem()
	for i := range v.NumField() { // every counter set, each to its own value: a new field must be encoded
		v.Field(i).SetInt(int64(1000*i + 7))
	}
	epoch := 12
	cases := map[string]epochData{
		"full": {Metrics: tamiyo.Metrics{Epoch: &epoch, TrainLoss: nissa.Metric{Value: 0.25, Measured: true},
			ValLoss: nissa.Metric{Value: 1e-7, Measured: true}, ValMetric: nissa.Metric{Value: 1e21, Measured: true},
			Contributions:  []tamiyo.Contribution{{Layer: 1, Slot: 0, DeltaLoss: -0.5}, {Layer: 3, Slot: 2, DeltaLoss: 3e-9}},
			SamplesPerStep: []int64{32, 0, 1 << 40}},
			ParamsUsed: 123456789, Seeds: map[string]int{"TRAINING": 2, "BLENDING": 1, "ROLLED_BACK": 3}, Decisions: 4,
			Counters: all, TrainFLOPs: math.MaxInt64},
		"non-finite metrics": {Metrics: tamiyo.Metrics{Epoch: &epoch, TrainLoss: nissa.Metric{Value: math.NaN(), Measured: true},
			ValLoss: nissa.Metric{Value: math.Inf(1), Measured: true}, ValMetric: nissa.Metric{Value: math.Inf(-1), Measured: true}},
			Seeds: map[string]int{}},
		"nothing set": {},
	}
	for name, d := range cases {
		want, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := d.AppendJSON([]byte("x")); string(got) != "x"+string(want) {
			t.Fatalf("%s:\n got %s\nwant x%s", name, got, want)
		}
	}
}
