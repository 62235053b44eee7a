package urza_test

import (
	"errors"
	"testing"

	"github.com/esper-morph/esper/core/urza"
)

func TestOutcomeFilesAndRecord(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	k1, err := s.PutOutcome(outcome(t, "run-a", 20, nil))
	if err != nil {
		t.Fatal(err)
	}
	k2, err := s.PutOutcome(outcome(t, "run-b", 5, nil))
	if err != nil {
		t.Fatal(err)
	}
	files, err := s.OutcomeFiles()
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 2 || files[0].Key != k1 || files[1].Key != k2 || files[0].Size == 0 || files[0].ModTime.IsZero() {
		t.Fatalf("files %+v", files)
	}
	all, _ := s.Outcomes("")
	got, err := s.OutcomeRecord(k1)
	if err != nil || string(got) != string(all[0]) {
		t.Fatalf("record %s: %v", got, err)
	}
	cases := []struct {
		key  string
		want error
	}{
		{"run-a/000000000099-1-0-0", urza.ErrNotFound},
		{"run-a", urza.ErrInvalidOutcome},
		{"run-a/../run-b/000000000005-1-0-0", urza.ErrInvalidOutcome},
		{"../x/y", urza.ErrInvalidOutcome},
		{"run-a/.hidden", urza.ErrInvalidOutcome},
	}
	for _, tc := range cases {
		t.Run(tc.key, func(t *testing.T) {
			if _, err := s.OutcomeRecord(tc.key); !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}
