package session_test

import (
	"encoding/json"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// TestTrainFLOPs checks the run's training FLOPs against hand counts:
// 3 x (host forward + live seeds' forward per sample) x samples.
func TestTrainFLOPs(t *testing.T) {
	lin := blueprint.Host{Kind: "linear", In: 16, Out: 32}
	// A linear 16->32 host with bias: 2*16*32 + 32 = 1056 FLOPs a sample;
	// without bias 1024. A lowrank rank-2 seed on it: 2*16*2 + 2*2*32 = 192.
	// A conv2d 3->8, kernel 3, padding 1 on 8x8 images with bias (params
	// 8*3*9 + 8 = 224): 64 positions x (2*216 + 8) = 28160.
	conv := blueprint.Host{Kind: "conv2d", In: 3, Out: 8, Kernel: 3, Stride: 1, Padding: 1, Spatial: []int64{8, 8}}
	lowrank := `{"template": "lowrank", "params": {"rank": 2}}`
	type phase struct {
		germinate string // a spec germinated in slot 0 of layer 0 first ("": none)
		steps     int64
		samples   []int64 // samples_per_step at the end of the phase's epoch (nil: absent)
	}
	for _, tc := range []struct {
		name   string
		host   blueprint.Host
		params int64
		phases []phase
		want   []int64 // Stats().TrainFLOPs after each phase
	}{
		{"linear host with bias", lin, 544, []phase{{"", 10, []int64{4}}}, []int64{3 * 1056 * 10 * 4}},
		{"linear host without bias", lin, 512, []phase{{"", 10, []int64{4}}}, []int64{3 * 1024 * 10 * 4}},
		{"host and a seed", lin, 544, []phase{{lowrank, 10, []int64{4}}}, []int64{3 * (1056 + 192) * 10 * 4}},
		{"cumulative, seed from the second epoch", lin, 544,
			[]phase{{"", 5, []int64{4}}, {lowrank, 7, []int64{6}}},
			[]int64{3 * 1056 * 5 * 4, 3*1056*5*4 + 3*(1056+192)*7*6}},
		{"params not the host's: seed only", lin, 100, []phase{{lowrank, 10, []int64{4}}}, []int64{3 * 192 * 10 * 4}},
		{"conv2d host", conv, 224, []phase{{"", 3, []int64{2}}}, []int64{3 * 28160 * 3 * 2}},
		{"block host is not counted", blueprint.Host{Kind: "block", In: 16, Out: 32}, 544, []phase{{"", 10, []int64{4}}}, []int64{0}},
		{"no samples reported", lin, 544, []phase{{lowrank, 10, nil}, {"", 2, []int64{1}}}, []int64{0, 3 * (1056 + 192) * 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Layers = []session.LayerConfig{{Name: "l0", Host: tc.host, Params: tc.params}}
			s := newSession(t, cfg)
			for i, ph := range tc.phases {
				if ph.germinate != "" {
					germinate(t, s, 0, 0, ph.germinate)
				}
				step(t, s, ph.steps)
				if _, err := s.EndEpoch(tamiyo.Metrics{SamplesPerStep: ph.samples}); err != nil {
					t.Fatal(err)
				}
				st, err := s.Stats()
				if err != nil {
					t.Fatal(err)
				}
				if st.TrainFLOPs != tc.want[i] {
					t.Errorf("phase %d: train_flops %d, want %d", i, st.TrainFLOPs, tc.want[i])
				}
			}
			// A snapshot carries the count to a restored session.
			snap, err := s.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			r := newSession(t, cfg)
			if err := r.Restore(snap); err != nil {
				t.Fatal(err)
			}
			if st, _ := r.Stats(); st.TrainFLOPs != tc.want[len(tc.want)-1] {
				t.Errorf("restored train_flops %d, want %d", st.TrainFLOPs, tc.want[len(tc.want)-1])
			}
		})
	}
}

// TestTrainFLOPsSamplesChecked: samples_per_step must give one value per
// layer, each >= 0.
func TestTrainFLOPsSamplesChecked(t *testing.T) {
	s := newSession(t, baseConfig())
	if _, err := s.EndEpoch(tamiyo.Metrics{SamplesPerStep: []int64{1}}); err == nil {
		t.Error("one value for two layers accepted")
	}
	if _, err := tamiyo.ParseMetrics([]byte(`{"samples_per_step": [1, -1]}`)); err == nil {
		t.Error("a negative samples_per_step parsed")
	}
}

// TestTrainFLOPsSeedPrunedMidEpoch: a seed counts for the steps it was
// live only (3 of 8 here), the host for all of them.
func TestTrainFLOPsSeedPrunedMidEpoch(t *testing.T) {
	cfg := baseConfig()
	cfg.Layers = []session.LayerConfig{{Name: "l0", Host: blueprint.Host{Kind: "linear", In: 16, Out: 32}, Params: 544}}
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template": "lowrank", "params": {"rank": 2}}`)
	step(t, s, 3)
	if _, err := s.Prune(0, 0, "test"); err != nil {
		t.Fatal(err)
	}
	step(t, s, 5)
	if _, err := s.EndEpoch(tamiyo.Metrics{SamplesPerStep: []int64{10}}); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(3 * 10 * (1056*8 + 192*3)); st.TrainFLOPs != want {
		t.Errorf("train_flops %d, want %d", st.TrainFLOPs, want)
	}
}

// TestTrainFLOPsResumedMidEpoch checks that a snapshot taken mid-epoch
// carries the epoch's steps so far: the resumed run's total equals the
// uninterrupted run's, and a snapshot without them (older ones) counts the
// epoch only from the resume.
func TestTrainFLOPsResumedMidEpoch(t *testing.T) {
	cfg := baseConfig()
	cfg.Layers = []session.LayerConfig{{Name: "l0", Host: blueprint.Host{Kind: "linear", In: 16, Out: 32}, Params: 544}}
	metrics := tamiyo.Metrics{SamplesPerStep: []int64{10}}
	total := func(s *session.Session) int64 {
		t.Helper()
		st, err := s.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return st.TrainFLOPs
	}
	whole := newSession(t, cfg)
	step(t, whole, 8)
	if _, err := whole.EndEpoch(metrics); err != nil {
		t.Fatal(err)
	}
	// By hand: 8 steps x 1056 FLOPs per sample x 10 samples x 3.
	if want := int64(3 * 10 * 1056 * 8); total(whole) != want {
		t.Fatalf("whole run: train_flops %d, want %d", total(whole), want)
	}

	cut := newSession(t, cfg)
	step(t, cut, 3)
	snap, err := cut.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		snap []byte
		want int64
	}{
		{"snapshot with the epoch's steps", snap, 3 * 10 * 1056 * 8},
		{"older snapshot without them", dropKey(t, snap, "flops_pending"), 3 * 10 * 1056 * 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newSession(t, cfg)
			if err := r.Restore(tc.snap); err != nil {
				t.Fatal(err)
			}
			step(t, r, 5)
			if _, err := r.EndEpoch(metrics); err != nil {
				t.Fatal(err)
			}
			if got := total(r); got != tc.want {
				t.Errorf("train_flops %d, want %d", got, tc.want)
			}
		})
	}
}

// dropKey returns the JSON object doc without key.
func dropKey(t *testing.T, doc []byte, key string) []byte {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	if _, ok := m[key]; !ok {
		t.Fatalf("snapshot has no %q", key)
	}
	delete(m, key)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
