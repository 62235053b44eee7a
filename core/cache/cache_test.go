package cache_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/esper-morph/esper/core/cache"
	"github.com/esper-morph/esper/core/errcode"
)

func newCache(t testing.TB, max int64) *cache.Cache {
	t.Helper()
	c, err := cache.New(max)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func meta(id string) cache.Meta {
	return cache.Meta{ID: id, InputShape: []int64{-1, 64}, OutputShape: []int64{-1, 10}, Dtype: "float32", Device: "cuda", Tags: []string{"t"}}
}

func TestGetCompatibility(t *testing.T) {
	c := newCache(t, 1<<20)
	if _, err := c.Put(meta("a"), make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		id   string
		want cache.Want
		err  error
		frag string
	}{
		{"any", "a", cache.Want{}, nil, ""},
		{"exact", "a", cache.Want{Shape: []int64{32, 64}, Dtype: "float32", Device: "cuda"}, nil, ""},
		{"device index", "a", cache.Want{Device: "cuda:1"}, nil, ""},
		{"dynamic want", "a", cache.Want{Shape: []int64{-1, 64}}, nil, ""},
		{"miss", "b", cache.Want{}, cache.ErrMiss, "b"},
		{"dtype", "a", cache.Want{Dtype: "float16"}, cache.ErrIncompatible, "dtype float32, want float16"},
		{"device", "a", cache.Want{Device: "cpu"}, cache.ErrIncompatible, "device cuda, want cpu"},
		{"prefix is not a device", "a", cache.Want{Device: "cudax"}, cache.ErrIncompatible, "device"},
		{"features", "a", cache.Want{Shape: []int64{8, 32}}, cache.ErrIncompatible, "input shape [-1, 64], want [8, 32]"},
		{"rank", "a", cache.Want{Shape: []int64{8, 4, 64}}, cache.ErrIncompatible, "input shape"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, err := c.Get(tc.id, tc.want)
			if tc.err == nil {
				if err != nil {
					t.Fatal(err)
				}
				if e.Meta.ID != "a" || len(e.Data) != 100 || e.Meta.Size != 100 {
					t.Fatalf("entry = %+v", e.Meta)
				}
				return
			}
			if !errors.Is(err, tc.err) || errcode.Of(err) != errcode.NotFound {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if !strings.Contains(err.Error(), tc.frag) {
				t.Fatalf("err %q lacks %q", err, tc.frag)
			}
		})
	}
	s := c.Stats()
	if s.Hits != 4 || s.Misses != 1 || s.CompatMisses != 5 || s.Entries != 1 || s.Bytes != 100 {
		t.Fatalf("stats = %+v", s)
	}
	// A pinned device does not fit another index; an entry without a device
	// fits all.
	pinned := meta("p")
	pinned.Device = "cuda:0"
	if _, err := c.Put(pinned, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("p", cache.Want{Device: "cuda:1"}); !errors.Is(err, cache.ErrIncompatible) {
		t.Fatalf("cuda:0 served cuda:1: %v", err)
	}
	anywhere := cache.Meta{ID: "any"}
	if _, err := c.Put(anywhere, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("any", cache.Want{Shape: []int64{1, 2, 3}, Dtype: "bfloat16", Device: "cpu"}); err != nil {
		t.Fatal(err)
	}
}

func TestEvictionByBytes(t *testing.T) {
	c := newCache(t, 1000)
	for i := 0; i < 4; i++ {
		ev, err := c.Put(meta(fmt.Sprint(i)), make([]byte, 300))
		wantEv := []string(nil)
		if i == 3 {
			wantEv = []string{"1"}
		}
		if err != nil || !slices.Equal(ev, wantEv) {
			t.Fatalf("put %d: evicted %v (want %v), %v", i, ev, wantEv, err)
		}
		if i == 2 {
			// Touch 0 so 1 is the least recently used.
			if _, err := c.Get("0", cache.Want{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// 4 x 300 > 1000: putting "3" evicted the LRU entry, "1".
	if got := c.Keys(); !slices.Equal(got, []string{"2", "0", "3"}) {
		t.Fatalf("keys = %v", got)
	}
	ev, err := c.Put(meta("big"), make([]byte, 900))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ev, []string{"2", "0", "3"}) {
		t.Fatalf("evicted %v", ev)
	}
	s := c.Stats()
	if s.Bytes != 900 || s.Entries != 1 || s.Evictions != 4 {
		t.Fatalf("stats = %+v", s)
	}
	// Larger than the whole cache: refused, nothing changes.
	_, err = c.Put(meta("huge"), make([]byte, 1001))
	if !errors.Is(err, cache.ErrTooLarge) || errcode.Of(err) != errcode.Budget || !strings.Contains(err.Error(), "1001 bytes") {
		t.Fatalf("err = %v", err)
	}
	if c.Len() != 1 || c.Stats().Rejected != 1 {
		t.Fatal("refused put changed the cache")
	}
	// Replacing an entry adjusts bytes without an eviction.
	if _, err := c.Put(meta("big"), make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.Bytes != 10 || s.Evictions != 4 {
		t.Fatalf("stats after replace = %+v", s)
	}
	if !c.Remove("big") || c.Remove("big") || c.Stats().Bytes != 0 {
		t.Fatal("Remove")
	}
}

func TestPutValidation(t *testing.T) {
	c := newCache(t, 100)
	cases := []struct {
		name string
		m    cache.Meta
		data []byte
	}{
		{"no id", cache.Meta{}, []byte{1}},
		{"size mismatch", cache.Meta{ID: "a", Size: 5}, []byte{1}},
		{"negative size", cache.Meta{ID: "a", Size: -1}, nil},
		{"bad shape", cache.Meta{ID: "a", InputShape: []int64{-2}}, []byte{1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Put(tc.m, tc.data); !errors.Is(err, cache.ErrInvalid) || errcode.Of(err) != errcode.Invalid {
				t.Fatalf("err = %v", err)
			}
		})
	}
	if _, err := cache.New(0); !errors.Is(err, cache.ErrInvalid) {
		t.Fatalf("New(0) = %v", err)
	}
	// Metadata-only entries count their stated size.
	if _, err := c.Put(cache.Meta{ID: "ext", Size: 60}, nil); err != nil {
		t.Fatal(err)
	}
	if ev, _ := c.Put(cache.Meta{ID: "ext2", Size: 60}, nil); !slices.Equal(ev, []string{"ext"}) {
		t.Fatalf("evicted %v", ev)
	}
}

func TestPutCopiesMeta(t *testing.T) {
	c := newCache(t, 100)
	m := meta("a")
	if _, err := c.Put(m, []byte{1}); err != nil {
		t.Fatal(err)
	}
	m.InputShape[1] = 7
	m.Tags[0] = "changed"
	got, ok := c.Peek("a")
	if !ok || got.InputShape[1] != 64 || got.Tags[0] != "t" {
		t.Fatalf("Peek = %+v", got)
	}
	if c.Stats().Hits != 0 {
		t.Fatal("Peek counted a hit")
	}
	c.Purge()
	if c.Len() != 0 || c.Stats().Bytes != 0 {
		t.Fatal("Purge")
	}
}

func TestConcurrent(t *testing.T) {
	c := newCache(t, 10_000)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				id := fmt.Sprint((g*7 + i) % 50)
				switch i % 4 {
				case 0:
					if _, err := c.Put(meta(id), make([]byte, 100+i%400)); err != nil {
						t.Error(err)
						return
					}
				case 3:
					c.Remove(id)
				default:
					_, _ = c.Get(id, cache.Want{Dtype: "float32"})
				}
				if s := c.Stats(); s.Bytes > s.MaxBytes {
					t.Errorf("bytes %d over bound %d", s.Bytes, s.MaxBytes)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	s := c.Stats()
	var sum int64
	for _, id := range c.Keys() {
		m, _ := c.Peek(id)
		sum += m.Size
	}
	if sum != s.Bytes || s.Bytes > 10_000 {
		t.Fatalf("bytes %d, sum of entries %d", s.Bytes, sum)
	}
}

func BenchmarkGetHit(b *testing.B) {
	c := newCache(b, 1<<30)
	for i := 0; i < 1000; i++ {
		if _, err := c.Put(meta(fmt.Sprintf("%064d", i)), make([]byte, 1024)); err != nil {
			b.Fatal(err)
		}
	}
	id := fmt.Sprintf("%064d", 500)
	want := cache.Want{Shape: []int64{32, 64}, Dtype: "float32", Device: "cuda:0"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Get(id, want); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGetHitParallel(b *testing.B) {
	c := newCache(b, 1<<30)
	ids := make([]string, 64)
	for i := range ids {
		ids[i] = fmt.Sprintf("%064d", i)
		if _, err := c.Put(meta(ids[i]), make([]byte, 1024)); err != nil {
			b.Fatal(err)
		}
	}
	want := cache.Want{Dtype: "float32"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := c.Get(ids[i%len(ids)], want); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

func BenchmarkPutEvict(b *testing.B) {
	c := newCache(b, 64<<10)
	ids := make([]string, 1024)
	for i := range ids {
		ids[i] = fmt.Sprintf("%064d", i)
	}
	data := make([]byte, 1024)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := c.Put(meta(ids[i%len(ids)]), data); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
