package errcode_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
)

func TestOf(t *testing.T) {
	mine := errcode.New(errcode.State, "lifecycle: illegal transition")
	cases := []struct {
		name string
		err  error
		want errcode.Code
	}{
		{"nil", nil, errcode.OK},
		{"plain", errors.New("boom"), errcode.Internal},
		{"sentinel", errcode.ErrCorrupt, errcode.Corrupt},
		{"wrapped sentinel", fmt.Errorf("urza: get x: %w", errcode.ErrNotFound), errcode.NotFound},
		{"package sentinel", fmt.Errorf("seed 1/0: %w", mine), errcode.State},
		{"errorf", errcode.Errorf(errcode.Budget, "over by %d", 3), errcode.Budget},
		{"wrapped errorf", fmt.Errorf("ctx: %w", errcode.Errorf(errcode.IO, "disk")), errcode.IO},
		{"joined", errors.Join(errors.New("x"), errcode.ErrInvalid), errcode.Invalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := errcode.Of(tc.err); got != tc.want {
				t.Fatalf("Of(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestTableOrder(t *testing.T) {
	for i, e := range errcode.Table {
		if int(e.Code) != i {
			t.Fatalf("Table[%d] has code %d", i, e.Code)
		}
		if e.Name == "" {
			t.Fatalf("Table[%d] has no name", i)
		}
	}
}
