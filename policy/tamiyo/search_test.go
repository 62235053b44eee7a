package tamiyo_test

import (
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func TestSearchGerminatesKarnCandidate(t *testing.T) {
	cases := []struct {
		name      string
		cfg       tamiyo.Config
		search    bool
		maxParams int64
		wantIn    []string
		wantOut   []string
	}{
		{"fixed template by default", tamiyo.Config{}, false, 0, []string{"residual_mlp"}, []string{"karn request"}},
		{"search with the prior", tamiyo.Config{Search: true}, true, 0,
			[]string{"karn request epoch3-layer0", "ranked by the prior", "no gain predicted: no outcome history", "took candidate 1"}, nil},
		{"search under a tight budget", tamiyo.Config{Search: true, Governor: tamiyo.GovernorConfig{MaxParams: 900}}, true, 900,
			[]string{"karn request", "budget 8", "took candidate"}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newController(t, tc.cfg, linearHosts(1))
			if (c.Karn() != nil) != tc.search {
				t.Fatalf("Karn service present = %v, want %v", c.Karn() != nil, tc.search)
			}
			w := newWorld(1, 1)
			w.signal(0, nissa.GradNorm, 0.3)
			ds := w.run(t, c, flat...)
			d := ds[len(ds)-1]
			if d.Op != tamiyo.Germinate || d.Blueprint == nil {
				t.Fatalf("decision %+v", d)
			}
			if d.PredictedGain != nil { // the fixed template and an answer ranked by the prior predict nothing
				t.Fatalf("predicted gain %v without a predictor: %s", *d.PredictedGain, d.Reason)
			}
			for _, s := range tc.wantIn {
				if !strings.Contains(d.Reason, s) {
					t.Fatalf("reason lacks %q: %s", s, d.Reason)
				}
			}
			for _, s := range tc.wantOut {
				if strings.Contains(d.Reason, s) {
					t.Fatalf("reason has %q: %s", s, d.Reason)
				}
			}
			if tc.maxParams > 0 && d.ParamCount > tc.maxParams {
				t.Fatalf("%d params over the budget %d", d.ParamCount, tc.maxParams)
			}
			if err := blueprint.Check(d.Blueprint, linearHosts(1)[0], blueprint.Budget{MaxParams: tc.maxParams}); err != nil {
				t.Fatal(err)
			}
			if d.Template != d.Blueprint.Template || d.ParamCount != d.Blueprint.ParamCount {
				t.Fatalf("decision %s/%d, blueprint %s/%d", d.Template, d.ParamCount, d.Blueprint.Template, d.Blueprint.ParamCount)
			}
		})
	}
}

// TestSetKarnCountsRequests: the service given with SetKarn is the one
// asked, once per germination.
func TestSetKarnCountsRequests(t *testing.T) {
	c := newController(t, tamiyo.Config{Search: true}, linearHosts(1))
	c.SetKarn(karn.NewService(nil))
	w := newWorld(1, 1)
	ds := w.run(t, c, flat...)
	d := ds[len(ds)-1]
	if d.Op != tamiyo.Germinate || !strings.Contains(d.Reason, "karn request") {
		t.Fatalf("decision %+v", d)
	}
	if st := c.Karn().Stats(); st.Requests != 1 || st.Answered != 1 {
		t.Fatalf("karn stats %+v", st)
	}
}

func TestSearchDecisionsAreReproducible(t *testing.T) {
	ids := make([]string, 2)
	for i := range ids {
		c := newController(t, tamiyo.Config{Search: true, Seed: 11}, []blueprint.Host{{Kind: blueprint.HostConv2d, In: 8, Out: 16, Kernel: 3, Stride: 1, Padding: 1}})
		w := newWorld(1, 1)
		ds := w.run(t, c, flat...)
		d := ds[len(ds)-1]
		if d.Op != tamiyo.Germinate {
			t.Fatalf("decision %+v", d)
		}
		ids[i], _ = d.Blueprint.ID()
	}
	if ids[0] != ids[1] {
		t.Fatalf("two runs of one seed grew %s and %s", ids[0], ids[1])
	}
}
