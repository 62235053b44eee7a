package tamiyo_test

import (
	"errors"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/policy/tamiyo"
)

func TestSized(t *testing.T) {
	lin := blueprint.Host{Kind: "linear", In: 16, Out: 32}
	cases := []struct {
		name     string
		template string
		size     int
		// rank and params of the seed; wantErr when none is made.
		rank, params int64
		wantErr      bool
	}{
		// lowrank's default rank is 4: a quarter is 1, double is 8; params = rank*(16+32).
		{"lowrank quarter", "lowrank", 0, 1, 48, false},
		{"lowrank half", "lowrank", 1, 2, 96, false},
		{"lowrank default", "lowrank", 2, 4, 192, false},
		{"lowrank double", "lowrank", 3, 8, 384, false},
		{"linear default", "linear", 2, 0, 512, false},
		{"linear has no other size", "linear", 0, 0, 0, true},
		{"size out of range", "lowrank", 4, 0, 0, true},
		{"negative size", "lowrank", -1, 0, 0, true},
		{"host not supported", "conv3x3", 2, 0, 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tpl, err := blueprint.Lookup(tc.template)
			if err != nil {
				t.Fatal(err)
			}
			ir, err := tamiyo.Sized(tpl, lin, tc.size)
			if tc.wantErr {
				if err == nil || !errors.Is(err, blueprint.ErrInvalid) {
					t.Fatalf("Sized = %v, want an error wrapping blueprint.ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ir.ParamCount != tc.params {
				t.Errorf("params = %d, want %d", ir.ParamCount, tc.params)
			}
			if tc.rank > 0 && ir.Params["rank"] != tc.rank {
				t.Errorf("rank = %v, want %d", ir.Params["rank"], tc.rank)
			}
		})
	}
}

func TestAdvanceLegal(t *testing.T) {
	legal := map[lifecycle.State]bool{lifecycle.Germinated: true, lifecycle.Training: true, lifecycle.Blending: true}
	for _, st := range lifecycle.States() {
		if got := tamiyo.AdvanceLegal(st); got != legal[st] {
			t.Errorf("AdvanceLegal(%s) = %v, want %v", st, got, legal[st])
		}
	}
	if ops := tamiyo.MoveOps(); len(ops) != 5 || ops[0] != "wait" || ops[1] != "germinate" {
		t.Errorf("MoveOps = %v", ops)
	}
}
