package urza_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/recovery"
	"github.com/esper-morph/esper/core/urza"
)

func TestPutGetRoundTrip(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	w := safetensors(1000, 1)
	id := put(t, s, manifest(t, 4, []string{"b", "a", "b"}, nil), w)
	if !canon.IsID(id) {
		t.Fatalf("id %q", id)
	}
	for _, p := range []string{"objects/" + id[:2] + "/" + id + ".json", "objects/" + id[:2] + "/" + id + ".safetensors", "index.json"} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Fatalf("layout: %v", err)
		}
	}
	a, err := s.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Weights, w) || a.ID != id || canon.ID(a.ManifestJSON) != id {
		t.Fatal("round trip changed the artifact")
	}
	m := a.Manifest
	if m.WeightsSize != int64(len(w)) || m.WeightsSHA256 != canon.ID(w) || m.ParamCount != 64*4+4*10 || !canon.IsID(m.BlueprintID) {
		t.Fatalf("manifest = %+v", m)
	}
	if !slices.Equal(m.Tags, []string{"a", "b"}) {
		t.Fatalf("tags = %v, want sorted and unique", m.Tags)
	}
	// The stored manifest is canonical.
	c, err := canon.Canonicalize(a.ManifestJSON)
	if err != nil || !bytes.Equal(c, a.ManifestJSON) {
		t.Fatal("stored manifest is not canonical")
	}
	// Same artifact again: same id, nothing rewritten.
	mpath := filepath.Join(root, "objects", id[:2], id+".json")
	before, _ := os.Stat(mpath)
	time.Sleep(5 * time.Millisecond)
	// Key order, tag order and explicit weights fields do not change the id.
	again := manifest(t, 4, []string{"a", "b"}, map[string]any{"weights_sha256": canon.ID(w), "weights_size": len(w)})
	if id2 := put(t, s, again, w); id2 != id {
		t.Fatalf("second put gave %s, want %s", id2, id)
	}
	after, _ := os.Stat(mpath)
	if !after.ModTime().Equal(before.ModTime()) {
		t.Fatal("second put rewrote the manifest")
	}
	info, err := s.Stat(id)
	if err != nil || info.ID != id || info.Template != "lowrank" || info.WeightsSize != int64(len(w)) {
		t.Fatalf("Stat = %+v, %v", info, err)
	}
	// Different weights, different id.
	if id3 := put(t, s, manifest(t, 4, nil, nil), safetensors(1000, 2)); id3 == id {
		t.Fatal("different weights share an id")
	}
}

func TestPutRejects(t *testing.T) {
	s := openStore(t, t.TempDir(), &urza.Options{MaxWeights: 1 << 20})
	w := safetensors(10, 1)
	other := safetensors(10, 2)
	bad := func(extra map[string]any) []byte { return manifest(t, 4, nil, extra) }
	cases := []struct {
		name     string
		m, w     []byte
		sentinel error
		code     errcode.Code
		frag     string
	}{
		{"not json", []byte(`{`), w, urza.ErrInvalidManifest, errcode.Invalid, ""},
		{"unknown field", bad(map[string]any{"colour": "red"}), w, urza.ErrInvalidManifest, errcode.Invalid, "colour"},
		{"no blueprint", bad(map[string]any{"blueprint": nil}), w, urza.ErrInvalidManifest, errcode.Invalid, "blueprint is required"},
		{"bad blueprint", bad(map[string]any{"blueprint": map[string]any{"version": 1}}), w, urza.ErrInvalidManifest, errcode.Invalid, "blueprint"},
		{"blueprint id", bad(map[string]any{"blueprint_id": strings.Repeat("0", 64)}), w, urza.ErrInvalidManifest, errcode.Invalid, "not the blueprint's id"},
		{"param count", bad(map[string]any{"param_count": 7}), w, urza.ErrInvalidManifest, errcode.Invalid, "param_count 7"},
		{"dtype", bad(map[string]any{"dtype": "float8"}), w, urza.ErrInvalidManifest, errcode.Invalid, "float8"},
		{"no shape", bad(map[string]any{"input_shape": nil}), w, urza.ErrInvalidManifest, errcode.Invalid, "input_shape"},
		{"zero dim", bad(map[string]any{"output_shape": []int{0, 10}}), w, urza.ErrInvalidManifest, errcode.Invalid, "output_shape"},
		{"device", bad(map[string]any{"device": "CUDA 0"}), w, urza.ErrInvalidManifest, errcode.Invalid, "device"},
		{"validation array", bad(map[string]any{"validation": []int{1}}), w, urza.ErrInvalidManifest, errcode.Invalid, "validation must be a JSON object"},
		{"tag", bad(map[string]any{"tags": []string{"a\nb"}}), w, urza.ErrInvalidManifest, errcode.Invalid, "tag"},
		{"weights hash", bad(map[string]any{"weights_sha256": canon.ID(other)}), w, urza.ErrInvalidManifest, errcode.Invalid, "weights_sha256"},
		{"weights size", bad(map[string]any{"weights_size": 3}), w, urza.ErrInvalidManifest, errcode.Invalid, "weights_size 3"},
		{"not safetensors", bad(nil), []byte("\x80\x02cos\nsystem\n"), urza.ErrInvalidWeights, errcode.Invalid, ""},
		{"no weights", bad(nil), nil, urza.ErrInvalidWeights, errcode.Invalid, "shorter"},
		{"too large", bad(nil), safetensors(1<<18+1, 1), urza.ErrTooLarge, errcode.Budget, "limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := s.Put(tc.m, tc.w)
			if id != "" {
				t.Fatalf("id %q returned with an error", id)
			}
			wantCode(t, err, tc.sentinel, tc.code, tc.frag)
		})
	}
	if got, _ := s.List(urza.Query{}); len(got) != 0 {
		t.Fatalf("refused puts left %d artifacts", len(got))
	}
}

// corruptions damage a stored artifact in the ways the catalogue lists.
var corruptions = []struct {
	name  string
	apply func(t *testing.T, root, id string)
	frag  string
}{
	{"flipped weight byte", func(t *testing.T, root, id string) {
		p := weightsPath(root, id)
		b, _ := os.ReadFile(p)
		b[len(b)-1] ^= 0xff
		write(t, p, b)
	}, "weights hash"},
	{"truncated weights", func(t *testing.T, root, id string) {
		if err := os.Truncate(weightsPath(root, id), 100); err != nil {
			t.Fatal(err)
		}
	}, "truncated"},
	{"appended weights", func(t *testing.T, root, id string) {
		b, _ := os.ReadFile(weightsPath(root, id))
		write(t, weightsPath(root, id), append(b, 0))
	}, "too long"},
	{"missing weights", func(t *testing.T, root, id string) {
		if err := os.Remove(weightsPath(root, id)); err != nil {
			t.Fatal(err)
		}
	}, "missing"},
	{"forged manifest", func(t *testing.T, root, id string) {
		b, _ := os.ReadFile(manifestPath(root, id))
		write(t, manifestPath(root, id), bytes.Replace(b, []byte(`"device":"cpu"`), []byte(`"device":"gpu"`), 1))
	}, "manifest hashes to"},
	{"forged weights with matching size", func(t *testing.T, root, id string) {
		b, _ := os.ReadFile(weightsPath(root, id))
		forged := safetensors((len(b)-8-96)/4, 99)
		if len(forged) != len(b) {
			t.Fatalf("forged size %d != %d", len(forged), len(b))
		}
		write(t, weightsPath(root, id), forged)
	}, "weights hash"},
	{"truncated manifest", func(t *testing.T, root, id string) {
		if err := os.Truncate(manifestPath(root, id), 10); err != nil {
			t.Fatal(err)
		}
	}, "manifest hashes to"},
}

func weightsPath(root, id string) string {
	return filepath.Join(root, "objects", id[:2], id+".safetensors")
}
func manifestPath(root, id string) string { return filepath.Join(root, "objects", id[:2], id+".json") }
func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptArtifactsRefused(t *testing.T) {
	for _, c := range corruptions {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			s := openStore(t, root, nil)
			good := put(t, s, manifest(t, 2, nil, nil), safetensors(64, 7))
			id := put(t, s, manifest(t, 4, nil, nil), safetensors(1000, 1))
			c.apply(t, root, id)
			a, err := s.Get(id)
			if a != nil {
				t.Fatal("a corrupt artifact was returned")
			}
			wantCode(t, err, urza.ErrCorrupt, errcode.Corrupt, c.frag, id)
			// The store is otherwise intact.
			if _, err := s.Get(good); err != nil {
				t.Fatal(err)
			}
			rep, err := s.Verify(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if rep.Checked != 2 || rep.OK != 1 || len(rep.Bad) == 0 || len(rep.Leftovers) != 0 {
				t.Fatalf("verify report = %+v", rep)
			}
			for _, p := range rep.Bad {
				if p.ID != id {
					t.Fatalf("verify blames %+v", p)
				}
			}
			// GC removes the bad artifact and only it.
			gc, err := s.GC(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(gc.Removed) == 0 {
				t.Fatal("GC removed nothing")
			}
			for _, r := range gc.Removed {
				if r.ID != id {
					t.Fatalf("GC removed %+v", r)
				}
			}
			if _, err := s.Get(id); errcode.Of(err) != errcode.NotFound {
				t.Fatalf("after GC: %v", err)
			}
			list, _ := s.List(urza.Query{})
			if len(list) != 1 || list[0].ID != good {
				t.Fatalf("list after GC = %v", list)
			}
		})
	}
}

func TestBreakerFencesCorruptArtifact(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, &urza.Options{Breaker: recovery.Config{Failures: 2, CoolDown: time.Hour}})
	m, w := manifest(t, 4, nil, nil), safetensors(100, 1)
	id := put(t, s, m, w)
	corruptions[0].apply(t, root, id)
	for i := 0; i < 2; i++ {
		_, err := s.Get(id)
		wantCode(t, err, urza.ErrCorrupt, errcode.Corrupt)
	}
	_, err := s.Get(id)
	wantCode(t, err, recovery.ErrOpen, errcode.Unavailable, id, "last failure", "weights hash")
	// Putting it again repairs the artifact and resets its breaker.
	if id2 := put(t, s, m, w); id2 != id {
		t.Fatal("id changed")
	}
	if _, err := s.Get(id); err != nil {
		t.Fatal(err)
	}
	// Misses never open a breaker.
	missing := strings.Repeat("ab", 32)
	for i := 0; i < 4; i++ {
		_, err := s.Get(missing)
		wantCode(t, err, urza.ErrNotFound, errcode.NotFound)
	}
}

func TestGetErrors(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	for _, id := range []string{"", "abc", strings.Repeat("A", 64), "../../../../etc/passwd"} {
		_, err := s.Get(id)
		wantCode(t, err, urza.ErrInvalidID, errcode.Invalid)
	}
	_, err := s.Stat(strings.Repeat("0", 64))
	wantCode(t, err, urza.ErrNotFound, errcode.NotFound)
	wantCode(t, s.Delete(strings.Repeat("0", 64)), urza.ErrNotFound, errcode.NotFound)
	wantCode(t, s.Delete("x"), urza.ErrInvalidID, errcode.Invalid)
}

func TestDelete(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	id := put(t, s, manifest(t, 4, nil, nil), safetensors(10, 1))
	keep := put(t, s, manifest(t, 8, nil, nil), safetensors(10, 2))
	if err := s.Delete(id); err != nil {
		t.Fatal(err)
	}
	_, err := s.Get(id)
	wantCode(t, err, urza.ErrNotFound, errcode.NotFound)
	wantCode(t, s.Delete(id), urza.ErrNotFound, errcode.NotFound)
	list, _ := s.List(urza.Query{})
	if len(list) != 1 || list[0].ID != keep {
		t.Fatalf("list = %v", list)
	}
	// A fresh Open agrees.
	list, _ = openStore(t, root, nil).List(urza.Query{})
	if len(list) != 1 {
		t.Fatalf("reopened list = %v", list)
	}
}

func TestList(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	a := put(t, s, manifest(t, 4, []string{"digits", "good"}, nil), safetensors(10, 1))
	time.Sleep(10 * time.Millisecond)
	b := put(t, s, manifest(t, 4, []string{"digits"}, map[string]any{"dtype": "float16", "device": "cuda"}), safetensors(10, 2))
	time.Sleep(10 * time.Millisecond)
	c := put(t, s, manifest(t, 8, []string{"spirals"}, map[string]any{"input_shape": []int{32, 64}}), safetensors(10, 3))
	infoA, _ := s.Stat(a)
	infoC, _ := s.Stat(c)
	cases := []struct {
		name string
		q    urza.Query
		want []string
	}{
		{"all newest first", urza.Query{}, []string{c, b, a}},
		{"limit", urza.Query{Limit: 2}, []string{c, b}},
		{"blueprint", urza.Query{BlueprintID: infoA.BlueprintID}, []string{b, a}},
		{"other blueprint", urza.Query{BlueprintID: infoC.BlueprintID}, []string{c}},
		{"template", urza.Query{Template: "lowrank"}, []string{c, b, a}},
		{"no template", urza.Query{Template: "conv3x3"}, nil},
		{"one tag", urza.Query{Tags: []string{"digits"}}, []string{b, a}},
		{"all tags", urza.Query{Tags: []string{"digits", "good"}}, []string{a}},
		{"dtype", urza.Query{Dtype: "float16"}, []string{b}},
		{"device", urza.Query{Device: "cpu"}, []string{c, a}},
		{"input shape any batch", urza.Query{InputShape: []int64{16, 64}}, []string{b, a}},
		{"input shape matches dynamic query", urza.Query{InputShape: []int64{-1, 64}}, []string{c, b, a}},
		{"input shape exact", urza.Query{InputShape: []int64{32, 64}}, []string{c, b, a}},
		{"output shape rank", urza.Query{OutputShape: []int64{10}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.List(tc.q)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, in := range got {
				ids = append(ids, in.ID)
			}
			if !slices.Equal(ids, tc.want) {
				t.Fatalf("List(%+v) = %v, want %v", tc.q, short(ids), short(tc.want))
			}
		})
	}
	// Results are copies.
	got, _ := s.List(urza.Query{Tags: []string{"good"}})
	got[0].Tags[0] = "mutated"
	again, _ := s.List(urza.Query{Tags: []string{"good"}})
	if len(again) != 1 {
		t.Fatal("List exposes the index")
	}
}

func short(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id[:8]
	}
	return out
}

func TestParseQuery(t *testing.T) {
	q, err := urza.ParseQuery([]byte(`{"tags":["a"],"input_shape":[-1,64],"limit":3}`))
	if err != nil || q.Limit != 3 || q.Tags[0] != "a" {
		t.Fatalf("ParseQuery = %+v, %v", q, err)
	}
	if q, err := urza.ParseQuery(nil); err != nil || q.Limit != 0 {
		t.Fatal("empty query")
	}
	for _, bad := range []string{`{"tag":"a"}`, `{"limit":-1}`, `[]`, `{} {}`} {
		_, err := urza.ParseQuery([]byte(bad))
		wantCode(t, err, urza.ErrInvalidQuery, errcode.Invalid)
	}
}

func TestIndexRebuilt(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	ids := map[string]bool{}
	for i := 0; i < 5; i++ {
		ids[put(t, s, manifest(t, i+1, nil, nil), safetensors(10, uint64(i)))] = true
	}
	listIDs := func(s *urza.Store) map[string]bool {
		t.Helper()
		got, err := s.List(urza.Query{})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, in := range got {
			m[in.ID] = true
		}
		return m
	}
	index := filepath.Join(root, "index.json")
	cases := []struct {
		name   string
		damage func()
	}{
		{"missing", func() { os.Remove(index) }},
		{"garbage", func() { write(t, index, []byte("{not json")) }},
		{"wrong version", func() { write(t, index, []byte(`{"version":99,"artifacts":[]}`)) }},
		{"stale: lists a ghost, misses one", func() {
			b, _ := os.ReadFile(index)
			var f map[string]any
			_ = json.Unmarshal(b, &f)
			arts := f["artifacts"].([]any)
			ghost := map[string]any{"id": strings.Repeat("f", 64), "blueprint_id": strings.Repeat("f", 64)}
			f["artifacts"] = append(arts[1:], ghost)
			b, _ = json.Marshal(f)
			write(t, index, b)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.damage()
			got := listIDs(openStore(t, root, nil))
			if len(got) != len(ids) {
				t.Fatalf("rebuilt index has %d artifacts, want %d", len(got), len(ids))
			}
			for id := range ids {
				if !got[id] {
					t.Fatalf("rebuilt index misses %s", id)
				}
			}
		})
	}
	// A live store notices a damaged index on its next List.
	os.Remove(index)
	if got := listIDs(s); len(got) != len(ids) {
		t.Fatalf("live store lists %d after the index vanished", len(got))
	}
}

func TestTwoStoresShareRoot(t *testing.T) {
	root := t.TempDir()
	a := openStore(t, root, nil)
	b := openStore(t, root, nil)
	id := put(t, a, manifest(t, 4, nil, nil), safetensors(10, 1))
	got, err := b.List(urza.Query{})
	if err != nil || len(got) != 1 || got[0].ID != id {
		t.Fatalf("second store lists %v, %v", got, err)
	}
	id2 := put(t, b, manifest(t, 5, nil, nil), safetensors(10, 2))
	if got, _ := a.List(urza.Query{}); len(got) != 2 {
		t.Fatalf("first store lists %d", len(got))
	}
	if err := a.Delete(id2); err != nil {
		t.Fatal(err)
	}
	if got, _ := b.List(urza.Query{}); len(got) != 1 {
		t.Fatalf("second store lists %d after delete", len(got))
	}
}

func TestVerifyAndGC(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	good := put(t, s, manifest(t, 4, nil, nil), safetensors(100, 1))
	bad := put(t, s, manifest(t, 5, nil, nil), safetensors(100, 2))
	corruptions[0].apply(t, root, bad)
	orphan := strings.Repeat("ab", 32)
	if err := os.MkdirAll(filepath.Join(root, "objects", "ab"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, weightsPath(root, orphan), safetensors(10, 3))
	write(t, filepath.Join(root, "objects", good[:2], ".tmp-"+good+".safetensors-123"), []byte("partial"))
	write(t, filepath.Join(root, ".tmp-index.json-9"), []byte("{"))
	write(t, filepath.Join(root, "objects", "ab", "README"), []byte("mine"))

	rep, err := s.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, p := range append(rep.Bad, rep.Leftovers...) {
		kinds[p.Kind]++
	}
	if len(rep.Bad) != 1 || rep.Bad[0].ID != bad {
		t.Fatalf("bad = %+v", rep.Bad)
	}
	want := map[string]int{urza.KindCorrupt: 1, urza.KindOrphan: 1, urza.KindTemp: 2, urza.KindUnexpected: 1}
	if fmt.Sprint(kinds) != fmt.Sprint(want) || rep.Checked != 2 || rep.OK != 1 {
		t.Fatalf("report = %+v", rep)
	}
	// Verify changed nothing.
	if _, err := os.Stat(weightsPath(root, orphan)); err != nil {
		t.Fatal("Verify removed a file")
	}

	// Default grace: young leftovers stay, the corrupt artifact goes.
	gc, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range gc.Removed {
		if r.ID != bad {
			t.Fatalf("GC within grace removed %+v", r)
		}
	}
	// No grace: leftovers go too; the foreign file stays.
	s2 := openStore(t, root, &urza.Options{TempGrace: -1})
	gc, err = s2.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(gc.Removed) != 3 || gc.Bytes == 0 {
		t.Fatalf("GC removed %+v", gc)
	}
	rep, _ = s2.Verify(context.Background())
	if len(rep.Bad) != 0 || len(rep.Leftovers) != 1 || rep.Leftovers[0].Kind != urza.KindUnexpected || rep.OK != 1 {
		t.Fatalf("after GC: %+v", rep)
	}
	if _, err := s2.Get(good); err != nil {
		t.Fatal(err)
	}
}

func TestCancelledMaintenance(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	put(t, s, manifest(t, 4, nil, nil), safetensors(10, 1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Verify(ctx)
	wantCode(t, err, urza.ErrCancelled, errcode.Cancelled)
	_, err = s.GC(ctx)
	wantCode(t, err, urza.ErrCancelled, errcode.Cancelled)
	wantCode(t, s.Reindex(ctx), urza.ErrCancelled, errcode.Cancelled)
}

func TestClosed(t *testing.T) {
	s := openStore(t, t.TempDir(), nil)
	id := put(t, s, manifest(t, 4, nil, nil), safetensors(10, 1))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	_, err := s.Get(id)
	wantCode(t, err, urza.ErrClosed, errcode.State)
	_, err = s.Put(manifest(t, 4, nil, nil), safetensors(10, 1))
	wantCode(t, err, urza.ErrClosed, errcode.State)
	_, err = s.List(urza.Query{})
	wantCode(t, err, urza.ErrClosed, errcode.State)
}

func TestOpenErrors(t *testing.T) {
	_, err := urza.Open("", nil)
	wantCode(t, err, nil, errcode.Invalid)
	_, err = urza.Open(t.TempDir(), &urza.Options{MaxWeights: -1})
	wantCode(t, err, nil, errcode.Invalid)
	file := filepath.Join(t.TempDir(), "f")
	write(t, file, nil)
	_, err = urza.Open(file, nil)
	wantCode(t, err, urza.ErrIO, errcode.IO)
}

func TestDefaultRoot(t *testing.T) {
	t.Setenv("ESPER_HOME", "/data/esper")
	if r, err := urza.DefaultRoot(); err != nil || r != "/data/esper/urza" {
		t.Fatalf("DefaultRoot = %q, %v", r, err)
	}
	t.Setenv("ESPER_HOME", "")
	t.Setenv("HOME", "/home/u")
	if r, err := urza.DefaultRoot(); err != nil || r != "/home/u/.esper/urza" {
		t.Fatalf("DefaultRoot = %q, %v", r, err)
	}
}

func TestRootUnder(t *testing.T) {
	t.Setenv("HOME", "/home/u")
	t.Setenv("ESPER_HOME", "/from/env") // RootUnder ignores the environment's ESPER_HOME
	cases := []struct{ home, want string }{
		{"/data/esper", "/data/esper/urza"},
		{"", "/home/u/.esper/urza"},
		{"rel/dir", "rel/dir/urza"},
	}
	for _, tc := range cases {
		if r, err := urza.RootUnder(tc.home); err != nil || r != tc.want {
			t.Errorf("RootUnder(%q) = %q, %v; want %q", tc.home, r, err, tc.want)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	other := openStore(t, root, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			st := s
			if g%2 == 1 {
				st = other
			}
			for i := 0; i < 15; i++ {
				// Half the goroutines write the same artifacts.
				seed := uint64(i)
				if g >= 3 {
					seed = uint64(100*g + i)
				}
				id, err := st.Put(manifest(t, 1+i%4, []string{fmt.Sprint(g)}, nil), safetensors(500, seed))
				if err != nil {
					errs <- err
					return
				}
				if _, err := st.Get(id); err != nil {
					errs <- err
					return
				}
				if _, err := st.List(urza.Query{Tags: []string{fmt.Sprint(g)}}); err != nil {
					errs <- err
					return
				}
				if g == 5 && i%5 == 4 {
					if err := st.Delete(id); err != nil {
						errs <- err
						return
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	rep, err := s.Verify(context.Background())
	if err != nil || len(rep.Bad)+len(rep.Leftovers) != 0 {
		t.Fatalf("verify after concurrent use: %+v, %v", rep, err)
	}
	list, _ := openStore(t, root, nil).List(urza.Query{})
	if len(list) != rep.OK {
		t.Fatalf("index lists %d, store holds %d", len(list), rep.OK)
	}
}

func TestReindexCorrectsEntries(t *testing.T) {
	root := t.TempDir()
	s := openStore(t, root, nil)
	id := put(t, s, manifest(t, 4, []string{"real"}, nil), safetensors(10, 1))
	index := filepath.Join(root, "index.json")
	b, _ := os.ReadFile(index)
	write(t, index, bytes.Replace(b, []byte(`"real"`), []byte(`"forged"`), 1))
	s2 := openStore(t, root, nil)
	if got, _ := s2.List(urza.Query{Tags: []string{"forged"}}); len(got) != 1 {
		t.Fatal("test setup: the edited index was not read")
	}
	if err := s2.Reindex(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, _ := s2.List(urza.Query{Tags: []string{"real"}}); len(got) != 1 || got[0].ID != id {
		t.Fatalf("Reindex kept the forged entry: %v", got)
	}
}
