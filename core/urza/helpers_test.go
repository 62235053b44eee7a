package urza_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/urza"
)

// safetensors returns a valid safetensors file with one F32 tensor "w" of n
// elements filled from seed.
func safetensors(n int, seed uint64) []byte {
	head := fmt.Sprintf(`{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[%d],"data_offsets":[0,%d]}}`, n, 4*n)
	for len(head)%8 != 0 {
		head += " "
	}
	b := make([]byte, 8+len(head)+4*n)
	binary.LittleEndian.PutUint64(b, uint64(len(head)))
	copy(b[8:], head)
	r := rand.New(rand.NewPCG(seed, seed))
	for i := 8 + len(head); i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

// manifest returns a manifest document for a lowrank seed of the given rank
// with the given tags; extra fields override or add keys.
func manifest(t testing.TB, rank int, tags []string, extra map[string]any) []byte {
	t.Helper()
	ir, err := blueprint.Instantiate("lowrank", blueprint.Params{"rank": rank}, blueprint.Host{Kind: "linear", In: 64, Out: 10})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]any{
		"blueprint":    ir,
		"input_shape":  []int64{-1, 64},
		"output_shape": []int64{-1, 10},
		"dtype":        "float32",
		"device":       "cpu",
		"validation":   map[string]any{"finite": true, "zero_at_init": true},
		"lineage":      map[string]any{"parent": nil, "run": "test"},
		"tags":         tags,
	}
	for k, v := range extra {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func openStore(t testing.TB, root string, opts *urza.Options) *urza.Store {
	t.Helper()
	s, err := urza.Open(root, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func put(t testing.TB, s *urza.Store, m, w []byte) string {
	t.Helper()
	id, err := s.Put(m, w)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func wantCode(t testing.TB, err error, sentinel error, code errcode.Code, frags ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %v", sentinel)
	}
	if sentinel != nil && !errors.Is(err, sentinel) {
		t.Fatalf("error %q does not wrap %v", err, sentinel)
	}
	if got := errcode.Of(err); got != code {
		t.Fatalf("errcode.Of(%q) = %v, want %v", err, got, code)
	}
	for _, f := range frags {
		if !strings.Contains(err.Error(), f) {
			t.Fatalf("error %q does not mention %q", err, f)
		}
	}
}
