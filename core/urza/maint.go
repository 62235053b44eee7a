package urza

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"
)

// Problem kinds in a VerifyReport and GCReport.
const (
	// KindCorrupt: an artifact failed verification (hash or size mismatch,
	// unreadable manifest).
	KindCorrupt = "corrupt"
	// KindUnreadable: an artifact that could not be read (an I/O error, not
	// a verification failure).
	KindUnreadable = "unreadable"
	// KindIncomplete: a manifest without its weights.
	KindIncomplete = "incomplete"
	// KindOrphan: weights without a manifest (left by an interrupted Put).
	KindOrphan = "orphan"
	// KindTemp: a temp file left by an interrupted write.
	KindTemp = "temp"
	// KindUnexpected: a file the store did not write (never removed).
	KindUnexpected = "unexpected"
	// KindIndex: the index lists an artifact that is not stored intact.
	KindIndex = "index"
)

// Problem is one finding of Verify or one removal of GC.
type Problem struct {
	// ID is the artifact concerned, when known.
	ID string `json:"id,omitempty"`
	// Path is the file, relative to the root.
	Path string `json:"path"`
	// Kind is one of the Kind* constants.
	Kind string `json:"kind"`
	// Detail says what is wrong.
	Detail string `json:"detail"`
}

// VerifyReport is the result of Verify.
type VerifyReport struct {
	// Checked is the number of artifacts (manifests) verified.
	Checked int `json:"checked"`
	// OK is how many of them verified.
	OK int `json:"ok"`
	// Bytes is the total size of the intact artifacts' weights.
	Bytes int64 `json:"bytes"`
	// Bad lists the bad objects (KindCorrupt, KindIncomplete,
	// KindUnreadable) and index entries without intact files (KindIndex). Empty when the store is
	// sound.
	Bad []Problem `json:"bad"`
	// Leftovers lists files that are not artifacts: temp files and orphan
	// weights of interrupted writes (GC removes them) and files the store
	// did not write (KindUnexpected, left alone).
	Leftovers []Problem `json:"leftovers"`
}

// GCReport is the result of GC.
type GCReport struct {
	// Removed lists every file removed and why.
	Removed []Problem `json:"removed"`
	// Bytes is the total size of the removed files.
	Bytes int64 `json:"bytes"`
}

// Verify reads and hashes every artifact and reports what is wrong, without
// changing anything. An artifact that cannot be read is reported as
// KindUnreadable, with the error as detail. When ctx ends it stops and returns the partial report
// with an error wrapping ErrCancelled.
func (s *Store) Verify(ctx context.Context) (VerifyReport, error) {
	rep := VerifyReport{Bad: []Problem{}, Leftovers: []Problem{}}
	if err := s.checkOpen("verify"); err != nil {
		return rep, err
	}
	sv, err := s.survey(ctx)
	if err != nil {
		return rep, fmt.Errorf("urza: verify: %w", err)
	}
	rep.Leftovers = append(rep.Leftovers, sv.leftovers...)
	for _, id := range sv.manifests {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("urza: verify: %w: %w", ErrCancelled, err)
		}
		rep.Checked++
		n, err := s.verifyStored(id)
		switch {
		case err == nil:
			rep.OK++
			rep.Bytes += n
		case errors.Is(err, ErrNotFound):
			rep.Checked-- // deleted meanwhile
		default:
			rep.Bad = append(rep.Bad, s.problem(id, err))
		}
	}
	if err := s.refreshIndex(ctx); err != nil {
		return rep, fmt.Errorf("urza: verify: %w", err)
	}
	s.mu.RLock()
	var missing []string
	for id := range s.entries {
		if f := sv.files[id]; !f.manifest || !f.weights {
			missing = append(missing, id)
		}
	}
	s.mu.RUnlock()
	sort.Strings(missing)
	for _, id := range missing {
		rep.Bad = append(rep.Bad, Problem{ID: id, Path: indexName, Kind: KindIndex, Detail: "index lists an artifact whose files are missing"})
	}
	return rep, nil
}

// problem describes a failed load of id.
func (s *Store) problem(id string, err error) Problem {
	kind := KindUnreadable
	if errors.Is(err, ErrCorrupt) {
		kind = KindCorrupt
		if s.missing(weightsKey(id)) {
			kind = KindIncomplete
		}
	}
	return Problem{ID: id, Path: manifestKey(id), Kind: kind, Detail: err.Error()}
}

// missing reports whether key is known not to exist.
func (s *Store) missing(key string) bool {
	_, err := s.be.stat(context.Background(), key)
	return errors.Is(err, fs.ErrNotExist)
}

// survey is one pass over objects/: the ids with a manifest, the files
// found per id and the leftovers (temps, orphans, unexpected files).
type survey struct {
	manifests []string
	files     map[string]objectFiles
	leftovers []Problem
	// ages holds the age of each leftover, by path.
	ages map[string]time.Duration
	// sizes holds the size of each leftover, by path.
	sizes map[string]int64
}

func (s *Store) survey(ctx context.Context) (*survey, error) {
	sv := &survey{files: make(map[string]objectFiles), ages: make(map[string]time.Duration), sizes: make(map[string]int64)}
	now := time.Now()
	var temps, others []Problem
	err := s.walkObjects(ctx, func(dir, name string, o object) error {
		path := o.Key
		sv.ages[path] = now.Sub(o.ModTime)
		sv.sizes[path] = o.Size
		if strings.HasPrefix(name, tmpPrefix) {
			id, _ := tempID(name)
			temps = append(temps, Problem{ID: id, Path: path, Kind: KindTemp, Detail: "temp file of an interrupted or ongoing write"})
			return nil
		}
		id, ext, ok := objectName(name)
		if !ok || dir != id[:2] {
			others = append(others, Problem{Path: path, Kind: KindUnexpected, Detail: "not a file the store writes"})
			return nil
		}
		f := sv.files[id]
		if ext == manifestExt {
			f.manifest = true
		} else {
			f.weights = true
		}
		sv.files[id] = f
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Temp files of index.json live in the root.
	rootEntries, err := s.be.list(ctx, "", false)
	if err != nil {
		return nil, err
	}
	for _, e := range rootEntries {
		if !e.Dir && strings.HasPrefix(e.Key, tmpPrefix) {
			sv.ages[e.Key] = now.Sub(e.ModTime)
			sv.sizes[e.Key] = e.Size
			temps = append(temps, Problem{Path: e.Key, Kind: KindTemp, Detail: "temp file of an interrupted or ongoing index write"})
		}
	}
	for id, f := range sv.files {
		if f.manifest {
			sv.manifests = append(sv.manifests, id)
		} else {
			others = append(others, Problem{ID: id, Path: weightsKey(id), Kind: KindOrphan, Detail: "weights without a manifest"})
		}
	}
	sort.Strings(sv.manifests)
	sv.leftovers = append(temps, others...)
	sort.Slice(sv.leftovers, func(i, j int) bool { return sv.leftovers[i].Path < sv.leftovers[j].Path })
	return sv, nil
}

// GC removes temp files and weights without a manifest once they are older
// than Options.TempGrace (younger ones may belong to a write in progress in
// another process; this process's own writes are never touched), and every
// artifact that fails verification (both files). Files the store did not
// write are left alone. It returns what it removed; when ctx ends it stops
// with the partial report and an error wrapping ErrCancelled.
func (s *Store) GC(ctx context.Context) (GCReport, error) {
	rep := GCReport{Removed: []Problem{}}
	if err := s.checkOpen("gc"); err != nil {
		return rep, err
	}
	sv, err := s.survey(ctx)
	if err != nil {
		return rep, fmt.Errorf("urza: gc: %w", err)
	}
	remove := func(p Problem, size int64) {
		if err := s.be.remove(ctx, p.Path); err == nil {
			rep.Removed = append(rep.Removed, p)
			rep.Bytes += size
		}
	}
	var dropped []string
	for _, p := range sv.leftovers {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("urza: gc: %w: %w", ErrCancelled, err)
		}
		path := p.Path
		if p.Kind == KindUnexpected || (s.opts.TempGrace > 0 && sv.ages[path] < s.opts.TempGrace) {
			continue
		}
		if p.ID == "" {
			// An index temp: this process writes those under indexMu.
			s.indexMu.Lock()
			remove(p, sv.sizes[path])
			s.indexMu.Unlock()
			continue
		}
		// Under the id's lock, a write of this process is not in progress;
		// re-check that an orphan is still one.
		unlock := s.lockID(p.ID)
		if p.Kind != KindOrphan || s.missing(manifestKey(p.ID)) {
			remove(p, sv.sizes[path])
		}
		unlock()
	}
	for _, id := range sv.manifests {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("urza: gc: %w: %w", ErrCancelled, err)
		}
		unlock := s.lockID(id)
		_, lerr := s.verifyStored(id)
		if errors.Is(lerr, ErrCorrupt) {
			p := s.problem(id, lerr)
			var size int64
			if st, err := s.be.stat(ctx, weightsKey(id)); err == nil {
				size = st.Size
			}
			remove(Problem{ID: id, Path: weightsKey(id), Kind: p.Kind, Detail: p.Detail}, size)
			if st, err := s.be.stat(ctx, manifestKey(id)); err == nil {
				size = st.Size
			}
			remove(p, size)
			dropped = append(dropped, id)
			s.breakers.Reset(id)
		}
		unlock()
	}
	if len(dropped) > 0 {
		err := s.updateIndex(ctx, trustIndex, func(e map[string]Info) bool {
			for _, id := range dropped {
				delete(e, id)
			}
			return true
		})
		if err != nil {
			return rep, fmt.Errorf("urza: gc: %w", err)
		}
	}
	return rep, nil
}

// Reindex rebuilds the index from the manifests on disk, ignoring
// index.json: it picks up artifacts written by a process that died before
// indexing them, drops entries whose files are gone and corrects entries
// that disagree with their manifests.
func (s *Store) Reindex(ctx context.Context) error {
	if err := s.checkOpen("reindex"); err != nil {
		return err
	}
	if err := s.updateIndex(ctx, rebuildIndex, nil); err != nil {
		return fmt.Errorf("urza: reindex: %w", err)
	}
	return nil
}
