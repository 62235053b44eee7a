package blueprint_test

import (
	"math/rand/v2"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
)

func TestCheck(t *testing.T) {
	lin := blueprint.Host{Kind: "linear", In: 64, Out: 10}
	ir := mustInstantiate(t, "residual_mlp", blueprint.Params{"width": 16}, lin)
	cases := []struct {
		name     string
		host     blueprint.Host
		budget   blueprint.Budget
		sentinel error
		code     errcode.Code
		frags    []string
	}{
		{"fits", lin, blueprint.Budget{MaxParams: 1210, MaxFLOPs: 2410}, nil, errcode.OK, nil},
		{"no limits", lin, blueprint.Budget{}, nil, errcode.OK, nil},
		{"over params", lin, blueprint.Budget{MaxParams: 1000}, blueprint.ErrOverBudget, errcode.Budget, []string{"param_count 1210 > max_params 1000"}},
		{"over flops", lin, blueprint.Budget{MaxFLOPs: 2000}, blueprint.ErrOverBudget, errcode.Budget, []string{"flops_per_sample 2410 > max_flops 2000"}},
		{"output mismatch", blueprint.Host{Kind: "linear", In: 64, Out: 12}, blueprint.Budget{}, blueprint.ErrShape, errcode.Invalid, []string{"(*, 10)", "(*, 12)"}},
		{"input mismatch", blueprint.Host{Kind: "linear", In: 32, Out: 10}, blueprint.Budget{}, blueprint.ErrShape, errcode.Invalid, []string{"expects 64 features", "(*, 32)"}},
		{"other layout", blueprint.Host{Kind: "conv2d", In: 64, Out: 10, Kernel: 1, Stride: 1}, blueprint.Budget{}, blueprint.ErrShape, errcode.Invalid, []string{"(N, 64, H, W)"}},
		{"negative budget", lin, blueprint.Budget{MaxParams: -1}, blueprint.ErrInvalid, errcode.Invalid, []string{">= 0"}},
		{"bad host", blueprint.Host{Kind: "linear"}, blueprint.Budget{}, blueprint.ErrHost, errcode.Invalid, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := blueprint.Check(ir, tc.host, tc.budget)
			if tc.sentinel == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, tc.sentinel, tc.code, tc.frags...)
		})
	}
}

func TestCheckSpatialMismatch(t *testing.T) {
	h := blueprint.Host{Kind: "conv2d", In: 8, Out: 8, Kernel: 3, Stride: 1, Padding: 1}
	ir := mustInstantiate(t, "conv3x3", nil, h)
	strided := h
	strided.Stride = 2
	err := blueprint.Check(ir, strided, blueprint.Budget{})
	wantErr(t, err, blueprint.ErrShape, errcode.Invalid, "(N, 8, H, W)", "(N, 8, floor((H+1)/2), floor((W+1)/2))")
}

func TestMutate(t *testing.T) {
	lin := blueprint.Host{Kind: "linear", In: 64, Out: 10}
	base := mustInstantiate(t, "residual_mlp", blueprint.Params{"width": 16}, lin)
	baseID, _ := base.ID()
	budget := blueprint.Budget{MaxParams: 5000}
	rng := rand.New(rand.NewPCG(1, 2))
	seen := map[string]bool{}
	cur := base
	for i := 0; i < 200; i++ {
		next, err := blueprint.Mutate(cur, budget, rng)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if err := blueprint.Check(next, lin, budget); err != nil {
			t.Fatalf("step %d: mutant fails its budget: %v", i, err)
		}
		id, _ := next.ID()
		curID, _ := cur.ID()
		if id == curID {
			t.Fatalf("step %d: mutation changed nothing", i)
		}
		seen[id] = true
		cur = next
	}
	if len(seen) < 10 {
		t.Fatalf("only %d distinct variants in 200 steps", len(seen))
	}
	if id, _ := base.ID(); id != baseID {
		t.Fatal("Mutate modified its input")
	}

	// Same seed, same walk.
	walk := func() []string {
		r := rand.New(rand.NewPCG(7, 7))
		var ids []string
		c := base
		for i := 0; i < 20; i++ {
			n, err := blueprint.Mutate(c, budget, r)
			if err != nil {
				t.Fatal(err)
			}
			id, _ := n.ID()
			ids = append(ids, id)
			c = n
		}
		return ids
	}
	a, b := walk(), walk()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("walks diverge at %d", i)
		}
	}
}

func TestMutateErrors(t *testing.T) {
	lin := blueprint.Host{Kind: "linear", In: 64, Out: 10}
	rng := rand.New(rand.NewPCG(1, 1))
	_, err := blueprint.Mutate(mustInstantiate(t, "linear", nil, lin), blueprint.Budget{}, rng)
	wantErr(t, err, blueprint.ErrNoMutation, errcode.Invalid, "no parameters")

	lr := mustInstantiate(t, "lowrank", blueprint.Params{"rank": 4}, lin)
	_, err = blueprint.Mutate(lr, blueprint.Budget{MaxParams: 10}, rng)
	wantErr(t, err, blueprint.ErrNoMutation, errcode.Invalid, "no valid variant")
	if !errorsIsBudget(err) {
		t.Fatalf("error %v does not carry the budget failure", err)
	}

	hand, err := blueprint.Parse([]byte(exampleIR))
	if err != nil {
		t.Fatal(err)
	}
	hand.Template = "custom"
	_, err = blueprint.Mutate(hand, blueprint.Budget{}, rng)
	wantErr(t, err, blueprint.ErrUnknownTemplate, errcode.NotFound, "custom")

	if _, err := blueprint.Mutate(lr, blueprint.Budget{}, nil); err == nil {
		t.Fatal("Mutate accepted a nil rng")
	}
}
