package urza

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/recovery"
)

// indexVersion is the format version of index.json.
const indexVersion = 1

// Info is an artifact's index entry: what List filters and returns.
type Info struct {
	ID          string    `json:"id"`
	BlueprintID string    `json:"blueprint_id"`
	Template    string    `json:"template,omitempty"`
	InputShape  []int64   `json:"input_shape"`
	OutputShape []int64   `json:"output_shape"`
	Dtype       string    `json:"dtype"`
	Device      string    `json:"device"`
	ParamCount  int64     `json:"param_count"`
	Tags        []string  `json:"tags,omitempty"`
	WeightsSize int64     `json:"weights_size"`
	Created     time.Time `json:"created"`
}

func infoOf(id string, m *Manifest, created time.Time) Info {
	return Info{
		ID: id, BlueprintID: m.BlueprintID, Template: m.template(),
		InputShape: m.InputShape, OutputShape: m.OutputShape,
		Dtype: m.Dtype, Device: m.Device, ParamCount: m.ParamCount,
		Tags: m.Tags, WeightsSize: m.WeightsSize, Created: created.UTC(),
	}
}

func (in Info) clone() Info {
	in.InputShape = slices.Clone(in.InputShape)
	in.OutputShape = slices.Clone(in.OutputShape)
	in.Tags = slices.Clone(in.Tags)
	return in
}

type indexFile struct {
	Version   int    `json:"version"`
	Artifacts []Info `json:"artifacts"`
}

// Query selects artifacts in List. Zero fields match everything.
type Query struct {
	// BlueprintID selects artifacts of one blueprint.
	BlueprintID string `json:"blueprint_id,omitempty"`
	// Template selects artifacts whose blueprint came from one template.
	Template string `json:"template,omitempty"`
	// Tags selects artifacts carrying every one of these tags.
	Tags []string `json:"tags,omitempty"`
	// InputShape and OutputShape select artifacts of these shapes; -1 on
	// either side matches any size.
	InputShape  []int64 `json:"input_shape,omitempty"`
	OutputShape []int64 `json:"output_shape,omitempty"`
	// Dtype and Device select exact values.
	Dtype  string `json:"dtype,omitempty"`
	Device string `json:"device,omitempty"`
	// Limit caps the number of results (0: no cap).
	Limit int `json:"limit,omitempty"`
}

// ParseQuery decodes a query strictly; an empty document or "null" is the
// zero Query. Errors wrap ErrInvalidQuery.
func ParseQuery(data []byte) (Query, error) {
	var q Query
	if len(data) == 0 {
		return q, nil
	}
	if len(data) > 64<<10 {
		return q, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidQuery, len(data), 64<<10)
	}
	if err := canon.DecodeStrict(data, &q); err != nil {
		return Query{}, fmt.Errorf("%w: %v", ErrInvalidQuery, err)
	}
	if q.Limit < 0 {
		return Query{}, fmt.Errorf("%w: limit %d is negative", ErrInvalidQuery, q.Limit)
	}
	return q, nil
}

func (q *Query) match(in *Info) bool {
	if q.BlueprintID != "" && q.BlueprintID != in.BlueprintID {
		return false
	}
	if q.Template != "" && q.Template != in.Template {
		return false
	}
	if q.Dtype != "" && q.Dtype != in.Dtype {
		return false
	}
	if q.Device != "" && q.Device != in.Device {
		return false
	}
	for _, t := range q.Tags {
		if !slices.Contains(in.Tags, t) {
			return false
		}
	}
	return shapeMatch(q.InputShape, in.InputShape) && shapeMatch(q.OutputShape, in.OutputShape)
}

func shapeMatch(want, have []int64) bool {
	if len(want) == 0 {
		return true
	}
	if len(want) != len(have) {
		return false
	}
	for i := range want {
		if want[i] != -1 && have[i] != -1 && want[i] != have[i] {
			return false
		}
	}
	return true
}

// objectFiles is what a scan of objects/ found for one id.
type objectFiles struct {
	manifest, weights bool
}

// scanObjects lists the artifact objects under objects/ by id, without
// reading them.
func (s *Store) scanObjects(ctx context.Context) (map[string]objectFiles, error) {
	found := make(map[string]objectFiles)
	err := s.walkObjects(ctx, func(dir, name string, _ object) error {
		if id, ext, ok := objectName(name); ok && dir == id[:2] {
			f := found[id]
			if ext == manifestExt {
				f.manifest = true
			} else {
				f.weights = true
			}
			found[id] = f
		}
		return nil
	})
	return found, err
}

// walkObjects calls fn for every object in every objects/<xx> folder with
// the folder's name (xx) and the object's.
func (s *Store) walkObjects(ctx context.Context, fn func(dir, name string, o object) error) error {
	objs, err := s.be.list(ctx, objectsDir+"/", true)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %w", ErrCancelled, err)
		}
		dir, name, ok := strings.Cut(strings.TrimPrefix(o.Key, objectsDir+"/"), "/")
		if !ok || strings.Contains(name, "/") {
			continue
		}
		if err := fn(dir, name, o); err != nil {
			return err
		}
	}
	return nil
}

// indexEntry reads id's manifest (checking its hash) and the size of its
// weights, for the index. It does not hash the weights.
func (s *Store) indexEntry(id string) (Info, error) {
	m, _, err := s.readManifest(id)
	if err != nil {
		return Info{}, err
	}
	ctx := context.Background()
	st, err := s.be.stat(ctx, manifestKey(id))
	if err != nil {
		return Info{}, err
	}
	wst, err := s.be.stat(ctx, weightsKey(id))
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("%w: weights file is missing", ErrCorrupt)
	}
	if err != nil {
		return Info{}, err
	}
	if wst.Size != m.WeightsSize {
		return Info{}, sizeErr(wst.Size, m.WeightsSize)
	}
	return infoOf(id, m, st.ModTime), nil
}

// reconcile brings entries in line with the objects on disk: ids whose
// two files exist and whose manifest checks out are indexed, others are
// dropped. It reports whether entries changed.
func (s *Store) reconcile(ctx context.Context, entries map[string]Info) (bool, error) {
	found, err := s.scanObjects(ctx)
	if err != nil {
		return false, err
	}
	changed := false
	for id := range entries {
		if f := found[id]; !f.manifest || !f.weights {
			delete(entries, id)
			changed = true
		}
	}
	for id, f := range found {
		if _, ok := entries[id]; ok || !f.manifest || !f.weights {
			continue
		}
		if err := ctx.Err(); err != nil {
			return changed, fmt.Errorf("%w: %w", ErrCancelled, err)
		}
		info, err := s.indexEntry(id)
		if err != nil {
			continue // Corrupt or vanished: not indexed; Verify reports it.
		}
		entries[id] = info
		changed = true
	}
	return changed, nil
}

// readIndexFile loads index.json and its tag; ok is false when it is
// missing or unreadable (then it must be rebuilt). tag is the tag of the
// object read ("" when there is none), for a conditional rewrite.
func (s *Store) readIndexFile(ctx context.Context) (entries map[string]Info, tag string, ok bool) {
	b, obj, err := s.be.read(ctx, indexName, 1<<30)
	if err == nil {
		tag = obj.Tag
	}
	if err != nil || b == nil {
		return nil, tag, false
	}
	var f indexFile
	if err := canon.DecodeLenient(b, &f); err != nil || f.Version != indexVersion {
		return nil, tag, false
	}
	entries = make(map[string]Info, len(f.Artifacts))
	for _, in := range f.Artifacts {
		if !canon.IsID(in.ID) {
			return nil, tag, false
		}
		entries[in.ID] = in
	}
	return entries, tag, true
}

// indexMode says how much updateIndex trusts index.json.
type indexMode int

const (
	// trustIndex uses index.json as it is (rebuilt when missing or
	// unreadable).
	trustIndex indexMode = iota
	// reconcileIndex also checks that index.json lists exactly the
	// artifacts on disk (a directory scan; manifests of new ids are read).
	reconcileIndex
	// rebuildIndex ignores index.json and reads every manifest.
	rebuildIndex
)

// maxIndexRaces bounds how often updateIndex re-reads an index that
// another writer replaced between its read and its conditional write.
const maxIndexRaces = 50

// updateIndex rewrites the index under the process lock and the backend's
// lock: it loads index.json as mode says, applies mutate (may be nil),
// writes the result if anything changed and makes it the in-memory index.
// On a backend without a lock (S3) the write is conditional on the index
// being the one read; when another writer replaced it, the update starts
// again from the new one, so no writer's entries are lost.
func (s *Store) updateIndex(ctx context.Context, mode indexMode, mutate func(map[string]Info) bool) error {
	s.indexMu.Lock()
	defer s.indexMu.Unlock()
	unlock, err := s.be.lockIndex()
	if err != nil {
		return err
	}
	defer unlock()
	for race := 0; ; race++ {
		err := s.updateIndexOnce(ctx, mode, mutate)
		if !errors.Is(err, errChanged) {
			return err
		}
		if race == maxIndexRaces {
			return fmt.Errorf("write index: %w (%d times in a row)", err, maxIndexRaces)
		}
	}
}

// updateIndexOnce is one read-modify-write of updateIndex.
func (s *Store) updateIndexOnce(ctx context.Context, mode indexMode, mutate func(map[string]Info) bool) error {
	entries, tag, ok := s.readIndexFile(ctx)
	if mode == rebuildIndex {
		ok = false
	}
	changed := !ok
	if !ok {
		entries = make(map[string]Info)
	}
	if !ok || mode == reconcileIndex {
		c, err := s.reconcile(ctx, entries)
		if err != nil {
			return err
		}
		changed = changed || c
	}
	if mutate != nil && mutate(entries) {
		changed = true
	}
	if changed {
		list := make([]Info, 0, len(entries))
		for _, in := range entries {
			list = append(list, in)
		}
		sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
		b, err := json.Marshal(indexFile{Version: indexVersion, Artifacts: list})
		if err != nil {
			return fmt.Errorf("encode index: %w", err)
		}
		prev := tag
		if err := recovery.Retry(ctx, s.opts.Retry, func(ctx context.Context) error {
			var err error
			tag, err = s.be.writeIf(ctx, indexName, b, prev)
			return err
		}); err != nil {
			if errors.Is(err, errChanged) {
				return err
			}
			return fmt.Errorf("write index: %w", err)
		}
	}
	s.mu.Lock()
	s.entries, s.indexTag = entries, tag
	s.mu.Unlock()
	return nil
}

// refreshIndex reloads the in-memory index when index.json changed since
// it was loaded (another process wrote it), rebuilding it when it is
// missing or unreadable.
func (s *Store) refreshIndex(ctx context.Context) error {
	st, err := s.be.stat(ctx, indexName)
	s.mu.RLock()
	prev := s.indexTag
	s.mu.RUnlock()
	if err == nil && prev != "" && st.Tag == prev {
		return nil
	}
	if entries, tag, ok := s.readIndexFile(ctx); ok {
		s.mu.Lock()
		s.entries, s.indexTag = entries, tag
		s.mu.Unlock()
		return nil
	}
	return s.updateIndex(ctx, trustIndex, nil)
}
