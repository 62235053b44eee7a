package urza

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/recovery"
)

// Names in the store's layout.
const (
	objectsDir  = "objects"
	indexName   = "index.json"
	lockName    = "index.lock"
	manifestExt = ".json"
	weightsExt  = ".safetensors"
)

// Options configure a Store. The zero value gives the documented defaults.
type Options struct {
	// TempGrace is how old a temp file, or weights without a manifest, must
	// be before GC removes them: another process may still be writing them.
	// Default 1 h; a negative value removes them at any age (use only when
	// no other process writes to the root).
	TempGrace time.Duration
	// Retry is the policy for transient I/O errors. Default: 4 attempts,
	// 5 ms base, 200 ms cap, half the delay jittered from a seeded source.
	Retry recovery.Policy
	// Breaker configures the per-artifact breakers on Get. Default: open
	// after 3 consecutive failed loads, 30 s cool-down. NotFound, Invalid
	// and Cancelled errors never count as failures.
	Breaker recovery.Config
	// MaxWeights bounds an artifact's weights in bytes (default 16 GiB).
	MaxWeights int64
	// FileMode is the permission of stored files (default 0644).
	FileMode fs.FileMode
}

// Defaults of Options.
const (
	DefaultTempGrace  = time.Hour
	DefaultMaxWeights = 16 << 30
)

func (o Options) withDefaults() (Options, error) {
	if o.TempGrace == 0 {
		o.TempGrace = DefaultTempGrace
	}
	if o.MaxWeights < 0 {
		return o, fmt.Errorf("urza: options: max weights %d is negative: %w", o.MaxWeights, errcode.ErrInvalid)
	}
	if o.MaxWeights == 0 {
		o.MaxWeights = DefaultMaxWeights
	}
	if o.FileMode == 0 {
		o.FileMode = 0o644
	}
	if r := o.Retry; r.Attempts == 0 && r.Base == 0 && r.Max == 0 && r.Jitter == 0 && r.Rand == nil && r.Classify == nil {
		o.Retry = recovery.Policy{Attempts: 4, Base: 5 * time.Millisecond, Max: 200 * time.Millisecond,
			Jitter: 0.5, Rand: recovery.NewLockedRand(uint64(time.Now().UnixNano()))}
	}
	if err := o.Retry.Validate(); err != nil {
		return o, fmt.Errorf("urza: options: retry: %w", err)
	}
	if o.Breaker.Failures == 0 {
		o.Breaker.Failures = 3
	}
	if o.Breaker.Ignore == nil {
		o.Breaker.Ignore = func(err error) bool {
			switch errcode.Of(err) {
			case errcode.NotFound, errcode.Invalid, errcode.Cancelled:
				return true
			}
			return false
		}
	}
	return o, nil
}

// Store is an artifact store on a local directory or an S3-compatible
// bucket. Create it with Open; it is safe for concurrent use.
type Store struct {
	root     string
	be       backend
	opts     Options
	breakers *recovery.Breakers
	ops      opCounters

	// idLocks serialise writes (Put, Delete, GC) to ids sharing their first
	// byte; readers take none. Lock order: an id lock before indexMu.
	idLocks [256]sync.Mutex

	// indexMu serialises index rewrites in this process; the flock on
	// index.lock serialises them between processes.
	indexMu sync.Mutex

	// mu guards entries, indexTag and closed.
	mu       sync.RWMutex
	entries  map[string]Info
	indexTag string
	closed   bool
}

// DefaultRoot returns the default store root: $ESPER_HOME/urza, with
// ESPER_HOME defaulting to ~/.esper (RootUnder of the environment's value).
func DefaultRoot() (string, error) {
	return RootUnder(os.Getenv("ESPER_HOME"))
}

// RootUnder returns the store root for an ESPER_HOME value: home/urza, with
// "" meaning ~/.esper. Callers whose ESPER_HOME does not come from this
// process's environment (the C ABI's init settings) use it directly.
func RootUnder(home string) (string, error) {
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("urza: default root: %w", err)
		}
		home = filepath.Join(h, ".esper")
	}
	return filepath.Join(home, "urza"), nil
}

// Open opens (creating if needed) the store at root: a local directory, or
// an S3-compatible bucket when root is an s3://bucket/prefix URL (see
// OpenS3's configuration from the environment). It loads the index and
// reconciles it with the stored objects, rebuilding it when it is missing,
// unreadable or stale. opts may be nil.
func Open(root string, opts *Options) (*Store, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if IsURL(root) {
		cfg, err := S3ConfigFromEnv(root, os.Getenv)
		if err != nil {
			return nil, fmt.Errorf("urza: open %s: %w", root, err)
		}
		return openS3(cfg, o)
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	if root == "" {
		return nil, fmt.Errorf("urza: open: root is empty: %w", errcode.ErrInvalid)
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("urza: open %s: %w", root, err)
	}
	br, err := recovery.NewBreakers(o.Breaker)
	if err != nil {
		return nil, fmt.Errorf("urza: options: breaker: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(abs, objectsDir), 0o755); err != nil {
		return nil, fmt.Errorf("urza: open %s: %w", abs, ioErr(err))
	}
	return open(&dirBackend{root: abs, mode: o.FileMode}, o, br)
}

// open loads the index of the store on be.
func open(be backend, o Options, br *recovery.Breakers) (*Store, error) {
	s := &Store{root: be.location(), be: be, opts: o, breakers: br}
	if err := s.updateIndex(context.Background(), reconcileIndex, nil); err != nil {
		return nil, fmt.Errorf("urza: open %s: index: %w", s.root, err)
	}
	return s, nil
}

// Root returns the store's absolute root directory, or its s3:// URL.
func (s *Store) Root() string { return s.root }

// Close marks the store closed: later calls return ErrClosed. Calls in
// flight finish normally. Closing twice is a no-op.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *Store) checkOpen(op string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return fmt.Errorf("urza: %s: %w", op, ErrClosed)
	}
	return nil
}

// Keys of an artifact's two objects.
func manifestKey(id string) string { return objectsDir + "/" + id[:2] + "/" + id + manifestExt }
func weightsKey(id string) string  { return objectsDir + "/" + id[:2] + "/" + id + weightsExt }

// lockID locks the write lock of id's stripe and returns its unlock.
func (s *Store) lockID(id string) func() {
	b, _ := hex.DecodeString(id[:2])
	mu := &s.idLocks[b[0]]
	mu.Lock()
	return mu.Unlock
}

func checkID(op, id string) error {
	if !canon.IsID(id) {
		return fmt.Errorf("urza: %s %q: %w: want 64 lowercase hex digits", op, id, ErrInvalidID)
	}
	return nil
}

// Put stores an artifact and returns its id. The manifest is validated
// (see ParseManifest); weights_sha256 and weights_size are filled from the
// weights or, when given, must match them; the weights must be a
// well-formed safetensors file. Files are written atomically, weights
// first. Putting an artifact that is already stored intact is a no-op; one
// stored corrupt is rewritten.
func (s *Store) Put(manifestJSON, weights []byte) (_ string, err error) {
	defer s.ops.count(OpPut, &err)
	if err := s.checkOpen("put"); err != nil {
		return "", err
	}
	m, err := ParseManifest(manifestJSON)
	if err != nil {
		return "", fmt.Errorf("urza: put: %w", err)
	}
	if int64(len(weights)) > s.opts.MaxWeights {
		return "", fmt.Errorf("urza: put: %w: weights are %d bytes, limit %d", ErrTooLarge, len(weights), s.opts.MaxWeights)
	}
	if _, err := Tensors(weights); err != nil {
		return "", fmt.Errorf("urza: put: %w", err)
	}
	sum := canon.ID(weights)
	if m.WeightsSHA256 != "" && m.WeightsSHA256 != sum {
		return "", fmt.Errorf("urza: put: %w: weights_sha256 %s, the weights hash to %s", ErrInvalidManifest, m.WeightsSHA256, sum)
	}
	if m.WeightsSize != 0 && m.WeightsSize != int64(len(weights)) {
		return "", fmt.Errorf("urza: put: %w: weights_size %d, the weights are %d bytes", ErrInvalidManifest, m.WeightsSize, len(weights))
	}
	m.WeightsSHA256, m.WeightsSize = sum, int64(len(weights))
	mb, id, err := m.canonical()
	if err != nil {
		return "", fmt.Errorf("urza: put: %w", err)
	}
	// Files and index entry change together under the id's lock, so a
	// concurrent Delete of the same id cannot interleave.
	unlock := s.lockID(id)
	defer unlock()
	if err := s.write(id, mb, weights); err != nil {
		return "", fmt.Errorf("urza: put %s: %w", id, err)
	}
	info := infoOf(id, m, time.Now())
	if st, err := s.be.stat(context.Background(), manifestKey(id)); err == nil {
		info.Created = st.ModTime.UTC()
	}
	err = s.updateIndex(context.Background(), trustIndex, func(e map[string]Info) bool {
		if _, ok := e[id]; ok {
			return false
		}
		e[id] = info
		return true
	})
	if err != nil {
		return "", fmt.Errorf("urza: put %s: stored, but the index was not updated (Put again or Reindex): %w", id, err)
	}
	s.breakers.Reset(id)
	return id, nil
}

// write stores the two files of id unless an intact copy is there. The
// caller holds id's lock.
func (s *Store) write(id string, manifest, weights []byte) error {
	ctx := context.Background()
	if old, _, err := s.be.read(ctx, manifestKey(id), MaxManifestBytes); err == nil && bytes.Equal(old, manifest) {
		if w, _, err := s.be.read(ctx, weightsKey(id), int64(len(weights))); err == nil && bytes.Equal(w, weights) {
			return nil
		}
	}
	if err := recovery.Retry(ctx, s.opts.Retry, func(ctx context.Context) error {
		return s.be.write(ctx, weightsKey(id), weights)
	}); err != nil {
		return fmt.Errorf("write weights: %w", err)
	}
	if err := recovery.Retry(ctx, s.opts.Retry, func(ctx context.Context) error {
		return s.be.write(ctx, manifestKey(id), manifest)
	}); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

// Artifact is a verified artifact as Get returns it.
type Artifact struct {
	// ID is the artifact id.
	ID string
	// Manifest is the decoded manifest.
	Manifest *Manifest
	// ManifestJSON is the manifest's canonical bytes, as stored.
	ManifestJSON []byte
	// Weights are the safetensors bytes.
	Weights []byte
}

// Get loads the artifact id and verifies both hashes and the weights size.
// It returns ErrNotFound when there is no such artifact and ErrCorrupt,
// saying what failed, when verification fails; nothing is returned then.
// Transient I/O errors are retried. After Options.Breaker.Failures
// consecutive failed loads, Get fails fast with recovery.ErrOpen
// (Unavailable) until the cool-down passes.
func (s *Store) Get(id string) (_ *Artifact, err error) {
	defer s.ops.count(OpGet, &err)
	if err := s.checkOpen("get"); err != nil {
		return nil, err
	}
	if err := checkID("get", id); err != nil {
		return nil, err
	}
	var a *Artifact
	err = s.breakers.Do(id, func() error {
		return recovery.Retry(context.Background(), s.opts.Retry, func(context.Context) error {
			var err error
			a, err = s.load(id)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("urza: get %s: %w", id, err)
	}
	return a, nil
}

// load reads and verifies id's two files.
func (s *Store) load(id string) (*Artifact, error) {
	m, mb, err := s.readManifest(id)
	if err != nil {
		return nil, err
	}
	wb, wobj, err := s.be.read(context.Background(), weightsKey(id), m.WeightsSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: weights file is missing", ErrCorrupt)
	}
	if err != nil {
		return nil, err
	}
	if wb == nil || int64(len(wb)) != m.WeightsSize {
		return nil, sizeErr(max(wobj.Size, int64(len(wb))), m.WeightsSize)
	}
	if got := canon.ID(wb); got != m.WeightsSHA256 {
		return nil, fmt.Errorf("%w: weights hash to %s, manifest says %s", ErrCorrupt, got, m.WeightsSHA256)
	}
	return &Artifact{ID: id, Manifest: m, ManifestJSON: mb, Weights: wb}, nil
}

// verifyStored checks id's two objects like load, streaming the weights
// through the hash instead of keeping them, and returns the weights size.
func (s *Store) verifyStored(id string) (int64, error) {
	m, _, err := s.readManifest(id)
	if err != nil {
		return 0, err
	}
	f, st, err := s.be.open(context.Background(), weightsKey(id))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%w: weights file is missing", ErrCorrupt)
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if st.Size != m.WeightsSize {
		return 0, sizeErr(st.Size, m.WeightsSize)
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, m.WeightsSize+1))
	if err != nil {
		return 0, err
	}
	if n != m.WeightsSize {
		return 0, sizeErr(n, m.WeightsSize)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.WeightsSHA256 {
		return 0, fmt.Errorf("%w: weights hash to %s, manifest says %s", ErrCorrupt, got, m.WeightsSHA256)
	}
	return n, nil
}

// readManifest reads id's manifest and checks that it hashes to id.
func (s *Store) readManifest(id string) (*Manifest, []byte, error) {
	mb, obj, err := s.be.read(context.Background(), manifestKey(id), MaxManifestBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, err
	}
	if mb == nil {
		return nil, nil, fmt.Errorf("%w: manifest is %d bytes, over the %d-byte limit", ErrCorrupt, obj.Size, MaxManifestBytes)
	}
	if got := canon.ID(mb); got != id {
		return nil, nil, fmt.Errorf("%w: manifest hashes to %s, not its id", ErrCorrupt, got)
	}
	m, err := readManifest(mb)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return m, mb, nil
}

func sizeErr(have, want int64) error {
	what := "truncated"
	if have > want {
		what = "too long"
	}
	return fmt.Errorf("%w: weights %s: %d bytes, manifest says %d", ErrCorrupt, what, have, want)
}

// Stat returns id's index entry, read from its manifest (whose hash is
// checked) and the size of its weights (which are not hashed: use Get or
// Verify for that).
func (s *Store) Stat(id string) (Info, error) {
	if err := s.checkOpen("stat"); err != nil {
		return Info{}, err
	}
	if err := checkID("stat", id); err != nil {
		return Info{}, err
	}
	if _, err := s.be.stat(context.Background(), manifestKey(id)); errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("urza: stat %s: %w", id, ErrNotFound)
	}
	info, err := s.indexEntry(id)
	if err != nil {
		return Info{}, fmt.Errorf("urza: stat %s: %w", id, err)
	}
	return info, nil
}

// Delete removes the artifact id: manifest first (so it stops existing),
// then weights, then its index entry. Deleting a missing artifact returns
// ErrNotFound.
func (s *Store) Delete(id string) (err error) {
	defer s.ops.count(OpDelete, &err)
	if err := s.checkOpen("delete"); err != nil {
		return err
	}
	if err := checkID("delete", id); err != nil {
		return err
	}
	unlock := s.lockID(id)
	defer unlock()
	ctx := context.Background()
	mErr := s.be.remove(ctx, manifestKey(id))
	wErr := s.be.remove(ctx, weightsKey(id))
	switch {
	case errors.Is(mErr, fs.ErrNotExist) && errors.Is(wErr, fs.ErrNotExist):
		err = ErrNotFound
	case mErr != nil && !errors.Is(mErr, fs.ErrNotExist):
		err = mErr
	case wErr != nil && !errors.Is(wErr, fs.ErrNotExist):
		err = wErr
	}
	s.breakers.Reset(id)
	ierr := s.updateIndex(context.Background(), trustIndex, func(e map[string]Info) bool {
		_, ok := e[id]
		delete(e, id)
		return ok
	})
	if err == nil {
		err = ierr
	}
	if err != nil {
		return fmt.Errorf("urza: delete %s: %w", id, err)
	}
	return nil
}

// List returns the index entries matching q, newest first (then by id). It
// reads the in-memory index, reloading it when another process changed
// index.json.
func (s *Store) List(q Query) (_ []Info, err error) {
	defer s.ops.count(OpList, &err)
	if err := s.checkOpen("list"); err != nil {
		return nil, err
	}
	if err := s.refreshIndex(context.Background()); err != nil {
		return nil, fmt.Errorf("urza: list: %w", err)
	}
	s.mu.RLock()
	var out []Info
	for _, in := range s.entries {
		if q.match(&in) {
			out = append(out, in.clone())
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}
