package urza

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/recovery"
)

// Model versions: a policy's or predictor's model folder (manifest.json +
// model.safetensors, such as the value model's) published under a name.
// Each version is content-addressed like an artifact: its id is the
// SHA-256 of its version record (the name, the folder's manifest and the
// weights' hash and size), and every read re-hashes the record and the
// weights. Keys: models/<name>/<id>.json (the record) and
// models/<name>/<id>.safetensors (the weights), weights written first, so
// a version exists exactly when its record does. A version's publication
// time is its record's modification time; publishing the same content
// again writes nothing and keeps it.
const modelsDir = "models"

// modelName is the form of a model name.
var modelName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,63}$`)

// ErrInvalidModel is returned for a malformed model name or model folder
// manifest. [INVALID]
var ErrInvalidModel = errcode.New(errcode.Invalid, "invalid model version")

// ModelVersion describes one published version of a named model.
type ModelVersion struct {
	// Name is the model's name, ID the version's id (64 hex digits).
	Name string `json:"name"`
	ID   string `json:"id"`
	// WeightsSHA256 and WeightsSize describe model.safetensors.
	WeightsSHA256 string `json:"weights_sha256"`
	WeightsSize   int64  `json:"weights_size"`
	// Published is when the version was first published.
	Published time.Time `json:"published"`
}

// modelRecord is a version's stored record; its canonical bytes hash to
// the version id.
type modelRecord struct {
	Name          string          `json:"name"`
	Manifest      json.RawMessage `json:"manifest"`
	WeightsSHA256 string          `json:"weights_sha256"`
	WeightsSize   int64           `json:"weights_size"`
}

func modelRecordKey(name, id string) string  { return modelsDir + "/" + name + "/" + id + manifestExt }
func modelWeightsKey(name, id string) string { return modelsDir + "/" + name + "/" + id + weightsExt }

// CheckModelName returns an error wrapping ErrInvalidModel unless name is
// 1 to 64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or
// digit.
func CheckModelName(name string) error {
	if !modelName.MatchString(name) {
		return fmt.Errorf("urza: model name %q must be 1 to 64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit: %w",
			name, ErrInvalidModel)
	}
	return nil
}

// PutModel publishes a model folder's manifest (a JSON object) and weights
// (a safetensors file) as a version of name and returns it. The caller
// validates that they make a usable model (the store keeps bytes). The
// same content published again is the same version, unchanged.
func (s *Store) PutModel(name string, manifest, weights []byte) (_ ModelVersion, err error) {
	defer s.ops.count(OpPut, &err)
	if err := s.checkOpen("put model"); err != nil {
		return ModelVersion{}, err
	}
	if err := CheckModelName(name); err != nil {
		return ModelVersion{}, err
	}
	var obj map[string]any
	if err := canon.DecodeStrict(manifest, &obj); err != nil || obj == nil {
		return ModelVersion{}, fmt.Errorf("urza: put model %s: manifest.json is not a JSON object (%v): %w", name, err, ErrInvalidModel)
	}
	if int64(len(weights)) > s.opts.MaxWeights {
		return ModelVersion{}, fmt.Errorf("urza: put model %s: %w: weights are %d bytes, limit %d", name, ErrTooLarge, len(weights), s.opts.MaxWeights)
	}
	if _, err := Tensors(weights); err != nil {
		return ModelVersion{}, fmt.Errorf("urza: put model %s: %w", name, err)
	}
	mc, err := json.Marshal(obj) // canonical: sorted keys, no spaces
	if err != nil {
		return ModelVersion{}, fmt.Errorf("urza: put model %s: %w", name, err)
	}
	rec, err := json.Marshal(modelRecord{Name: name, Manifest: mc, WeightsSHA256: canon.ID(weights), WeightsSize: int64(len(weights))})
	if err != nil {
		return ModelVersion{}, fmt.Errorf("urza: put model %s: %w", name, err)
	}
	id := canon.ID(rec)
	unlock := s.lockID(id)
	defer unlock()
	ctx := context.Background()
	if old, _, err := s.be.read(ctx, modelRecordKey(name, id), MaxManifestBytes); err != nil || !bytes.Equal(old, rec) {
		if err := recovery.Retry(ctx, s.opts.Retry, func(ctx context.Context) error {
			return s.be.write(ctx, modelWeightsKey(name, id), weights)
		}); err != nil {
			return ModelVersion{}, fmt.Errorf("urza: put model %s %s: write weights: %w", name, id, err)
		}
		if err := recovery.Retry(ctx, s.opts.Retry, func(ctx context.Context) error {
			return s.be.write(ctx, modelRecordKey(name, id), rec)
		}); err != nil {
			return ModelVersion{}, fmt.Errorf("urza: put model %s %s: write record: %w", name, id, err)
		}
	}
	st, err := s.be.stat(ctx, modelRecordKey(name, id))
	if err != nil {
		return ModelVersion{}, fmt.Errorf("urza: put model %s %s: %w", name, id, err)
	}
	return ModelVersion{Name: name, ID: id, WeightsSHA256: canon.ID(weights), WeightsSize: int64(len(weights)), Published: st.ModTime.UTC()}, nil
}

// ModelVersions returns name's published versions, oldest first (by
// publication time, then id); none is an empty list. Records that do not
// verify are left out (GetModel names the fault).
func (s *Store) ModelVersions(name string) (_ []ModelVersion, err error) {
	defer s.ops.count(OpList, &err)
	if err := s.checkOpen("model versions"); err != nil {
		return nil, err
	}
	if err := CheckModelName(name); err != nil {
		return nil, err
	}
	ctx := context.Background()
	var objs []object
	err = recovery.Retry(ctx, s.opts.Retry, func(ctx context.Context) error {
		var e error
		objs, e = s.be.list(ctx, modelsDir+"/"+name+"/", false)
		return e
	})
	if errors.Is(err, fs.ErrNotExist) {
		return []ModelVersion{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("urza: model versions %s: %w", name, err)
	}
	out := []ModelVersion{}
	for _, o := range objs {
		base := o.Key[strings.LastIndex(o.Key, "/")+1:]
		id, ok := strings.CutSuffix(base, manifestExt)
		if o.Dir || !ok || checkID("model versions", id) != nil {
			continue
		}
		rec, err := s.modelRecord(name, id)
		if err != nil {
			continue
		}
		out = append(out, ModelVersion{Name: name, ID: id, WeightsSHA256: rec.WeightsSHA256, WeightsSize: rec.WeightsSize, Published: o.ModTime.UTC()})
	}
	slices.SortFunc(out, func(a, b ModelVersion) int {
		if c := a.Published.Compare(b.Published); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// modelRecord reads and verifies the record of version id of name.
func (s *Store) modelRecord(name, id string) (*modelRecord, error) {
	rb, _, err := s.be.read(context.Background(), modelRecordKey(name, id), MaxManifestBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("urza: model %s version %s: %w", name, id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("urza: model %s version %s: %w", name, id, err)
	}
	if rb == nil || canon.ID(rb) != id {
		return nil, fmt.Errorf("urza: model %s version %s: %w: the record does not hash to its id", name, id, ErrCorrupt)
	}
	var rec modelRecord
	if err := json.Unmarshal(rb, &rec); err != nil || rec.Name != name {
		return nil, fmt.Errorf("urza: model %s version %s: %w: the record does not decode or names another model", name, id, ErrCorrupt)
	}
	return &rec, nil
}

// GetModel returns version id of name, verified: its manifest (as
// published, canonical JSON) and weights. It returns ErrNotFound when there
// is no such version and ErrCorrupt when a hash or size does not match.
func (s *Store) GetModel(name, id string) (manifest, weights []byte, err error) {
	defer s.ops.count(OpGet, &err)
	if err := s.checkOpen("get model"); err != nil {
		return nil, nil, err
	}
	if err := CheckModelName(name); err != nil {
		return nil, nil, err
	}
	if err := checkID("get model", id); err != nil {
		return nil, nil, err
	}
	rec, err := s.modelRecord(name, id)
	if err != nil {
		return nil, nil, err
	}
	wb, _, err := s.be.read(context.Background(), modelWeightsKey(name, id), rec.WeightsSize)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("urza: model %s version %s: %w: weights are missing", name, id, ErrCorrupt)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("urza: model %s version %s: %w", name, id, err)
	}
	if int64(len(wb)) != rec.WeightsSize || canon.ID(wb) != rec.WeightsSHA256 {
		return nil, nil, fmt.Errorf("urza: model %s version %s: %w: weights hash to %s (%d bytes), the record says %s (%d bytes)",
			name, id, ErrCorrupt, canon.ID(wb), len(wb), rec.WeightsSHA256, rec.WeightsSize)
	}
	return rec.Manifest, wb, nil
}

// ModelFolder materialises version id of name, verified, as a model folder
// (manifest.json + model.safetensors) under cache/<name>/<id> and returns
// its path; a folder already there is reused (it was written whole, by a
// rename, from verified bytes).
func (s *Store) ModelFolder(name, id, cache string) (string, error) {
	if err := CheckModelName(name); err != nil {
		return "", err
	}
	if err := checkID("model folder", id); err != nil {
		return "", err
	}
	dir := filepath.Join(cache, name, id)
	if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); err == nil {
		return dir, nil
	}
	manifest, weights, err := s.GetModel(name, id)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", fmt.Errorf("urza: model folder %s: %v: %w", dir, err, ErrIO)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), "."+id+".tmp")
	if err != nil {
		return "", fmt.Errorf("urza: model folder %s: %v: %w", dir, err, ErrIO)
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), manifest, 0o644); err != nil {
		return "", fmt.Errorf("urza: model folder %s: %v: %w", dir, err, ErrIO)
	}
	if err := os.WriteFile(filepath.Join(tmp, "model.safetensors"), weights, 0o644); err != nil {
		return "", fmt.Errorf("urza: model folder %s: %v: %w", dir, err, ErrIO)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, serr := os.Stat(filepath.Join(dir, "model.safetensors")); serr == nil {
			return dir, nil // another process materialised it first
		}
		return "", fmt.Errorf("urza: model folder %s: %v: %w", dir, err, ErrIO)
	}
	return dir, nil
}
