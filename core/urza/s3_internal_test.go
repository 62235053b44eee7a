package urza

import (
	"context"
	"errors"
	"testing"
)

// TestS3WriteIfRefusesStaleTag is the conditional write the index relies on,
// step by step against the real server: a first write only when absent, a
// rewrite only with the tag that was read, and a stale tag refused.
func TestS3WriteIfRefusesStaleTag(t *testing.T) {
	srv := StartS3(t)
	cfg, err := S3ConfigFromEnv("s3://esper/cond", srv.Env)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newS3Backend(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := b.ensureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := b.writeIf(ctx, indexName, []byte("v1"), "")
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name    string
		data    string
		prev    string
		changed bool
	}{
		{"create when it exists", "v1b", "", true},
		{"a tag never read", "v1c", "0123456789abcdef0123456789abcdef", true},
		{"the tag read", "v2", first, false},
		{"the same tag again, now stale", "v3", first, true},
	}
	for _, st := range steps {
		_, err := b.writeIf(ctx, indexName, []byte(st.data), st.prev)
		if got := errors.Is(err, errChanged); got != st.changed || (err != nil && !got) {
			t.Fatalf("%s: error %v, want changed=%v", st.name, err, st.changed)
		}
	}
	data, obj, err := b.read(ctx, indexName, 10)
	if err != nil || string(data) != "v2" || obj.Tag == first {
		t.Fatalf("index holds %q (tag %s), %v; want v2 under a new tag", data, obj.Tag, err)
	}
}
