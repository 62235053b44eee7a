package urza_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/recovery"
	"github.com/esper-morph/esper/core/urza"
)

// openS3 opens the store at s3://bucket/prefix on srv with opts.
func openS3(t testing.TB, srv *urza.S3Server, url string, opts *urza.Options) *urza.Store {
	t.Helper()
	cfg, err := urza.S3ConfigFromEnv(url, srv.Env)
	if err != nil {
		t.Fatal(err)
	}
	s, err := urza.OpenS3(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestStoreContractOnEveryBackend runs the same contract on a directory and
// on a real S3 server: content addressing, verified reads, the index seen by
// a second store, outcomes, Verify and Delete.
func TestStoreContractOnEveryBackend(t *testing.T) {
	srv := urza.StartS3(t)
	backends := []struct {
		name string
		open func(t *testing.T) (a, b *urza.Store)
	}{
		{"dir", func(t *testing.T) (*urza.Store, *urza.Store) {
			root := t.TempDir()
			return openStore(t, root, nil), openStore(t, root, nil)
		}},
		{"s3", func(t *testing.T) (*urza.Store, *urza.Store) {
			return openS3(t, srv, "s3://contract/runs/a", nil), openS3(t, srv, "s3://contract/runs/a", nil)
		}},
	}
	for _, bk := range backends {
		t.Run(bk.name, func(t *testing.T) {
			s, other := bk.open(t)
			w := safetensors(256, 1)
			m := manifest(t, 4, []string{"kind:kernel", "run:r1"}, nil)
			id := put(t, s, m, w)
			if again := put(t, s, m, w); again != id {
				t.Fatalf("same content, ids %s and %s", id, again)
			}
			id2 := put(t, s, manifest(t, 2, []string{"kind:build"}, nil), safetensors(64, 2))
			// The second store (another process, another machine) sees both
			// through the index, and reads verify.
			list, err := other.List(urza.Query{Tags: []string{"kind:kernel"}})
			if err != nil || len(list) != 1 || list[0].ID != id {
				t.Fatalf("other store lists %+v, %v; want %s", list, err, id)
			}
			a, err := other.Get(id)
			if err != nil || !bytes.Equal(a.Weights, w) || a.Manifest.WeightsSize != int64(len(w)) {
				t.Fatalf("get from the other store: %v", err)
			}
			if info, err := other.Stat(id2); err != nil || info.ParamCount == 0 {
				t.Fatalf("stat %s: %+v, %v", id2, info, err)
			}
			key, err := s.PutOutcome(outcome(t, "run-x", 7, nil))
			if err != nil {
				t.Fatal(err)
			}
			recs, err := other.Outcomes("")
			if err != nil || len(recs) != 1 {
				t.Fatalf("outcomes: %d, %v", len(recs), err)
			}
			files, err := other.OutcomeFiles()
			if err != nil || len(files) != 1 || files[0].Key != key || files[0].Size == 0 {
				t.Fatalf("outcome files %+v, %v; want %s", files, err, key)
			}
			if _, err := other.OutcomeRecord(key); err != nil {
				t.Fatal(err)
			}
			runs, err := other.Runs()
			if err != nil || len(runs) != 1 || runs[0].RunID != "run-x" {
				t.Fatalf("runs %+v, %v", runs, err)
			}
			for _, ep := range []int{2, 1, 2} {
				if _, err := s.PutExperience(experience(t, "ppo-x", "policy", ep, nil)); err != nil {
					t.Fatal(err)
				}
			}
			exp, err := other.Experience("ppo-x")
			if err != nil || len(exp) != 2 {
				t.Fatalf("experience: %d, %v", len(exp), err)
			}
			if xr, err := other.ExperienceRuns(); err != nil || len(xr) != 1 || xr[0].Episodes["policy"] != 2 || xr[0].LastEpisode["policy"] != 2 {
				t.Fatalf("experience runs %+v, %v", xr, err)
			}
			rep, err := other.Verify(context.Background())
			if err != nil || rep.Checked != 2 || rep.OK != 2 || len(rep.Bad) != 0 || len(rep.Leftovers) != 0 {
				t.Fatalf("verify %+v, %v", rep, err)
			}
			if err := s.Delete(id2); err != nil {
				t.Fatal(err)
			}
			wantCode(t, s.Delete(id2), urza.ErrNotFound, errcode.NotFound)
			_, err = other.Get(id2)
			wantCode(t, err, urza.ErrNotFound, errcode.NotFound)
			if list, err := other.List(urza.Query{}); err != nil || len(list) != 1 {
				t.Fatalf("after delete the other store lists %d, %v", len(list), err)
			}
		})
	}
}

// TestS3CorruptObjectRefused damages objects where the server keeps them:
// every read is refused with the verify error, and GC removes the artifact.
func TestS3CorruptObjectRefused(t *testing.T) {
	srv := urza.StartS3(t)
	cases := []struct {
		name   string
		key    func(id string) string
		damage func([]byte) []byte
		want   string
	}{
		{"weights bit flipped", weightsObj, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, "weights hash to"},
		{"weights truncated", weightsObj, func(b []byte) []byte { return b[:len(b)-4] }, "truncated"},
		{"manifest edited", manifestObj, func(b []byte) []byte { return bytes.Replace(b, []byte(`"cpu"`), []byte(`"cuda"`), 1) }, "manifest hashes to"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("corrupt/%d", i)
			s := openS3(t, srv, "s3://esper/"+prefix, nil)
			id := put(t, s, manifest(t, 3, nil, nil), safetensors(128, uint64(i)))
			path := srv.ObjectPath("esper", prefix, tc.key(id))
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err = s.Get(id)
			wantCode(t, err, urza.ErrCorrupt, errcode.Corrupt, id, tc.want)
			rep, err := s.Verify(context.Background())
			if err != nil || rep.OK != 0 || len(rep.Bad) != 1 || rep.Bad[0].Kind != urza.KindCorrupt {
				t.Fatalf("verify %+v, %v", rep, err)
			}
			if _, err := s.GC(context.Background()); err != nil {
				t.Fatal(err)
			}
			_, err = s.Get(id)
			wantCode(t, err, urza.ErrNotFound, errcode.NotFound)
		})
	}
}

func weightsObj(id string) string  { return "objects/" + id[:2] + "/" + id + ".safetensors" }
func manifestObj(id string) string { return "objects/" + id[:2] + "/" + id + ".json" }

// TestS3ServerDown kills the server while a writer publishes artifacts in a
// loop: the writer's Put retries with backoff, then fails with an I/O error
// naming the store's URL; after a restart nothing is half-published (every
// index entry loads and verifies, Verify finds no index entry without its
// objects).
func TestS3ServerDown(t *testing.T) {
	srv := urza.StartS3(t)
	var attempts atomic.Int64
	opts := &urza.Options{Retry: recovery.Policy{Attempts: 4, Base: 20 * time.Millisecond, Max: 100 * time.Millisecond,
		Classify: func(err error) recovery.Class { attempts.Add(1); return recovery.Classify(err) }}}
	url := "s3://esper/down"
	s := openS3(t, srv, url, opts)
	var (
		wg      sync.WaitGroup
		stored  atomic.Int64
		lastErr error
		firstID atomic.Value
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			id, err := s.Put(manifest(t, 1+i%8, []string{"down"}, map[string]any{"lineage": map[string]any{"i": i}}), safetensors(4096, uint64(i)))
			if err != nil {
				lastErr = err
				return
			}
			firstID.CompareAndSwap(nil, id)
			stored.Add(1)
		}
	}()
	for stored.Load() < 3 {
		time.Sleep(5 * time.Millisecond)
	}
	srv.Stop()
	attempts.Store(0)
	start := time.Now()
	wg.Wait()
	took := time.Since(start)
	wantCode(t, lastErr, urza.ErrIO, errcode.IO, "s3://esper/down/")
	if n := attempts.Load(); n < 4 {
		t.Fatalf("the failing Put made %d attempts, want at least the policy's 4 (error %v)", n, lastErr)
	}
	if took < 20*time.Millisecond+40*time.Millisecond/2 {
		t.Fatalf("the failing Put gave up after %v: no backoff", took)
	}
	// Reads fail the same way while the server is down.
	_, err := s.Get(firstID.Load().(string))
	wantCode(t, err, nil, errcode.IO, "s3://esper/down/")
	_, err = s.List(urza.Query{})
	wantCode(t, err, nil, errcode.IO, "s3://esper/down/")

	srv.Start()
	fresh := openS3(t, srv, url, nil)
	all, err := fresh.List(urza.Query{})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(all)) < stored.Load() {
		t.Fatalf("index lists %d artifacts, %d Puts succeeded", len(all), stored.Load())
	}
	for _, in := range all {
		if _, err := fresh.Get(in.ID); err != nil {
			t.Fatalf("listed artifact %s does not load: %v", in.ID, err)
		}
	}
	rep, err := fresh.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Bad {
		t.Errorf("after the crash: %+v", p)
	}
}

// TestS3IndexTwoWriters has two stores (two clients, as two machines would)
// publish at once: the conditional index writes keep every entry.
func TestS3IndexTwoWriters(t *testing.T) {
	srv := urza.StartS3(t)
	url := "s3://esper/two"
	stores := []*urza.Store{openS3(t, srv, url, nil), openS3(t, srv, url, nil)}
	const each = 12
	var wg sync.WaitGroup
	errs := make(chan error, 2*each)
	for w, s := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				m := manifest(t, 1+i%8, []string{fmt.Sprintf("writer:%d", w)}, map[string]any{"lineage": map[string]any{"w": w, "i": i}})
				if _, err := s.Put(m, safetensors(64, uint64(100*w+i))); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The index as stored (not reconciled: a fresh store trusts it unless it
	// disagrees with the objects, so read it through List after a refresh).
	raw, err := os.ReadFile(srv.ObjectPath("esper", "two", "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(raw), `"blueprint_id"`); n != 2*each {
		t.Fatalf("index.json holds %d entries, want %d", n, 2*each)
	}
	for w, s := range stores {
		list, err := s.List(urza.Query{})
		if err != nil || len(list) != 2*each {
			t.Fatalf("store %d lists %d artifacts, %v; want %d", w, len(list), err, 2*each)
		}
	}
}

// TestS3ConfigFromEnv reads the URL and the environment.
func TestS3ConfigFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cases := []struct {
		url     string
		env     map[string]string
		want    urza.S3Config
		wantErr string
	}{
		{"s3://b/p/q/", map[string]string{"ESPER_S3_ENDPOINT": "http://127.0.0.1:9000", "AWS_ENDPOINT_URL": "https://x", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"},
			urza.S3Config{URL: "s3://b/p/q/", Bucket: "b", Prefix: "p/q/", Endpoint: "127.0.0.1:9000", Region: "us-east-1", AccessKey: "a", SecretKey: "s"}, ""},
		{"s3://b", map[string]string{"AWS_ENDPOINT_URL": "https://minio.example:443", "AWS_DEFAULT_REGION": "eu-west-3"},
			urza.S3Config{URL: "s3://b", Bucket: "b", Endpoint: "minio.example:443", Secure: true, Region: "eu-west-3"}, ""},
		{"s3://b/x", nil, urza.S3Config{URL: "s3://b/x", Bucket: "b", Prefix: "x/", Endpoint: "s3.amazonaws.com", Secure: true, Region: "us-east-1"}, ""},
		{"s3:///x", nil, urza.S3Config{}, "want s3://bucket"},
		{"s3://b?x=1", nil, urza.S3Config{}, "want s3://bucket"},
		{"s3://b", map[string]string{"ESPER_S3_ENDPOINT": "ftp://h"}, urza.S3Config{}, "want http(s)://host"},
		{"s3://b", map[string]string{"AWS_ACCESS_KEY_ID": "a"}, urza.S3Config{}, "set both"},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			got, err := urza.S3ConfigFromEnv(tc.url, env(tc.env))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.Is(err, errcode.ErrInvalid) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
