package urza_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/urza"
)

func TestModelVersions(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	w1, w2 := safetensors(4, 1), safetensors(4, 2)
	a, err := s.PutModel("value", []byte(`{"kind": "value_mlp", "schema": 1}`), w1)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.PutModel("value", []byte(`{"schema":1,"kind":"value_mlp"}`), w1) // same content, other spelling
	if err != nil || again != a {
		t.Fatalf("same content: %+v, want %+v (%v)", again, a, err)
	}
	time.Sleep(20 * time.Millisecond) // publication order is the record's modification time (coarse on some file systems)
	b, err := s.PutModel("value", []byte(`{"kind": "value_mlp", "schema": 1}`), w2)
	if err != nil || b.ID == a.ID {
		t.Fatalf("second version: %+v %v", b, err)
	}
	vs, err := s.ModelVersions("value")
	if err != nil || len(vs) != 2 || vs[0].ID != a.ID || vs[1].ID != b.ID {
		t.Fatalf("versions %+v %v", vs, err)
	}
	if vs, err := s.ModelVersions("none"); err != nil || len(vs) != 0 {
		t.Fatalf("no versions: %+v %v", vs, err)
	}
	m, w, err := s.GetModel("value", a.ID)
	if err != nil || string(m) != `{"kind":"value_mlp","schema":1}` || string(w) != string(w1) {
		t.Fatalf("get: %s %v", m, err)
	}
	dir, err := s.ModelFolder("value", a.ID, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "model.safetensors")); string(got) != string(w1) {
		t.Fatal("model folder weights differ")
	}

	for _, tc := range []struct {
		name     string
		call     func() error
		code     errcode.Code
		sentinel error
	}{
		{"bad name", func() error { _, err := s.PutModel("Bad/Name", []byte(`{}`), w1); return err }, errcode.Invalid, urza.ErrInvalidModel},
		{"manifest not an object", func() error { _, err := s.PutModel("value", []byte(`[1]`), w1); return err }, errcode.Invalid, urza.ErrInvalidModel},
		{"weights not safetensors", func() error { _, err := s.PutModel("value", []byte(`{}`), []byte("nope")); return err }, errcode.Invalid, urza.ErrInvalidWeights},
		{"unknown version", func() error { _, _, err := s.GetModel("value", a.ID[:63]+"0"); return err }, errcode.NotFound, urza.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.call(), tc.sentinel, tc.code) })
	}

	// Corruption is refused on read: the weights, then the record.
	wk := filepath.Join(root, "models", "value", b.ID+".safetensors")
	bad := append([]byte(nil), w2...)
	bad[len(bad)-1] ^= 0xff
	if err := os.WriteFile(wk, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.GetModel("value", b.ID)
	wantCode(t, err, urza.ErrCorrupt, errcode.Corrupt, "weights hash to")
	rk := filepath.Join(root, "models", "value", a.ID+".json")
	if err := os.WriteFile(rk, []byte(`{"name":"value"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.GetModel("value", a.ID)
	wantCode(t, err, urza.ErrCorrupt, errcode.Corrupt, "does not hash to its id")
	if vs, err := s.ModelVersions("value"); err != nil || len(vs) != 1 || vs[0].ID != b.ID {
		t.Fatalf("a record that does not verify is left out: %+v %v", vs, err)
	}
}
