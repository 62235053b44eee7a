package urza

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"
)

// OutcomeFile names one stored outcome record and when it last changed, so
// a reader that keeps what it decoded re-reads only the records written
// since (an in-flight record is rewritten under the same key when its
// germination ends).
type OutcomeFile struct {
	// Key is "<run_id>/<name>", as PutOutcome returns it.
	Key string `json:"key"`
	// Size and ModTime are the file's.
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mod_time"`
}

// OutcomeFiles lists every run's outcome records without reading them,
// ordered by run and name.
func (s *Store) OutcomeFiles() ([]OutcomeFile, error) {
	if err := s.checkOpen("outcome files"); err != nil {
		return nil, err
	}
	runs, err := s.runIDs()
	if err != nil {
		return nil, fmt.Errorf("urza: outcome files: %w", err)
	}
	var out []OutcomeFile
	for _, run := range runs {
		entries, err := s.runRecords(context.Background(), run)
		if err != nil {
			return nil, fmt.Errorf("urza: outcome files: %w", err)
		}
		for _, e := range entries {
			name := strings.TrimSuffix(strings.TrimPrefix(e.Key, runPrefix(run)), manifestExt)
			out = append(out, OutcomeFile{Key: run + "/" + name, Size: e.Size, ModTime: e.ModTime})
		}
	}
	return out, nil
}

// OutcomeRecord reads one record by its key ("<run_id>/<name>"). A key
// that names no record is ErrNotFound; a record that does not decode is
// ErrCorrupt.
func (s *Store) OutcomeRecord(key string) (json.RawMessage, error) {
	if err := s.checkOpen("outcome record"); err != nil {
		return nil, err
	}
	run, name, ok := strings.Cut(key, "/")
	if !ok || !validRunID(run) || name == "" || strings.ContainsAny(name, `/\`) || strings.HasPrefix(name, ".") {
		return nil, fmt.Errorf("urza: outcome record %q: %w: want <run_id>/<name>", key, ErrInvalidOutcome)
	}
	b, obj, err := s.be.read(context.Background(), runPrefix(run)+name+manifestExt, MaxOutcomeBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("urza: outcome record %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("urza: outcome record %s: %w", key, err)
	}
	if b == nil {
		return nil, fmt.Errorf("%w: outcome %s is %d bytes, over the %d-byte limit", ErrCorrupt, key, obj.Size, MaxOutcomeBytes)
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("%w: outcome %s does not decode", ErrCorrupt, key)
	}
	return json.RawMessage(b), nil
}
