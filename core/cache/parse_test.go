package cache_test

import (
	"errors"
	"testing"

	"github.com/esper-morph/esper/core/cache"
)

func TestParse(t *testing.T) {
	m, err := cache.ParseMeta([]byte(`{"id":"a","input_shape":[-1,64],"dtype":"float32","device":"cuda","size":10,"tags":["x"]}`))
	if err != nil || m.ID != "a" || m.Size != 10 || m.InputShape[1] != 64 {
		t.Fatalf("ParseMeta = %+v, %v", m, err)
	}
	w, err := cache.ParseWant([]byte(`{"shape":[2,64],"dtype":"float32"}`))
	if err != nil || w.Dtype != "float32" {
		t.Fatalf("ParseWant = %+v, %v", w, err)
	}
	if w, err := cache.ParseWant(nil); err != nil || w.Dtype != "" {
		t.Fatalf("empty want = %+v, %v", w, err)
	}
	for _, bad := range []string{`{"id":"a","colour":1}`, `{"id":""}`, `{"id":"a"} x`, `{"id":"a","size":-1}`, `[`} {
		if _, err := cache.ParseMeta([]byte(bad)); !errors.Is(err, cache.ErrInvalid) {
			t.Fatalf("ParseMeta(%s) = %v", bad, err)
		}
	}
	if _, err := cache.ParseWant([]byte(`{"shape":"x"}`)); !errors.Is(err, cache.ErrInvalid) {
		t.Fatalf("bad want accepted: %v", err)
	}
}

func FuzzParseMetaAndWant(f *testing.F) {
	for _, s := range []string{`{"id":"a","input_shape":[-1,64],"size":3}`, `{"shape":[1],"device":"cuda:0"}`, `null`, `{}`} {
		f.Add([]byte(s), []byte(`{"dtype":"float32"}`))
	}
	f.Fuzz(func(t *testing.T, metaDoc, wantDoc []byte) {
		m, err := cache.ParseMeta(metaDoc)
		if err != nil {
			if !errors.Is(err, cache.ErrInvalid) {
				t.Fatalf("ParseMeta error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		w, err := cache.ParseWant(wantDoc)
		if err != nil {
			if !errors.Is(err, cache.ErrInvalid) {
				t.Fatalf("ParseWant error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// Whatever parses can go through the cache without a panic.
		c, _ := cache.New(1 << 20)
		if _, err := c.Put(m, nil); err != nil && !errors.Is(err, cache.ErrTooLarge) {
			t.Fatalf("Put of parsed meta: %v", err)
		}
		_, _ = c.Get(m.ID, w)
	})
}
