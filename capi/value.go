package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/urza"
	"github.com/esper-morph/esper/policy/value"
)

// The value model's exports: translation only, see policy/value.

//export esper_value_dataset
func esper_value_dataset(root, optionsJSON *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		if root == nil {
			return errNull("urza_root")
		}
		var opts value.Options
		if optionsJSON != nil {
			var err error
			if opts, err = value.ParseOptions([]byte(C.GoString(optionsJSON))); err != nil {
				return err
			}
		}
		store, err := historyStore(root)
		if err != nil {
			return fmt.Errorf("value dataset: %w", err)
		}
		defer store.Close()
		d, err := value.Build(store, opts)
		if err != nil {
			return err
		}
		return setJSON(out, d)
	})
}

// predictRequest is esper_value_predict's input.
type predictRequest struct {
	X [][]float64 `json:"x"`
}

//export esper_value_predict
func esper_value_predict(modelDir, rowsJSON *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		dir, err := goString(modelDir, "model_dir")
		if err != nil {
			return err
		}
		doc, err := goString(rowsJSON, "rows_json")
		if err != nil {
			return err
		}
		var req predictRequest
		if err := canon.DecodeStrict([]byte(doc), &req); err != nil {
			return errcode.Errorf(errcode.Invalid, "value predict: rows_json: %v", err)
		}
		m, err := value.Load(dir)
		if err != nil {
			return err
		}
		preds, err := m.PredictBatchX(nil, req.X)
		if err != nil {
			return fmt.Errorf("value predict: %w", err)
		}
		return setJSON(out, map[string]any{"predictions": preds, "features": m.Manifest().Features, "target": m.Manifest().Target})
	})
}

//export esper_value_features
func esper_value_features(out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		return setJSON(out, map[string]any{"features": value.FeatureNames(), "target": value.TargetName,
			"kind": value.Kind, "schema": value.Schema})
	})
}

//export esper_value_publish
func esper_value_publish(h C.uint64_t, name, modelDir *C.char, out **C.char) C.int {
	return publishModel(h, name, modelDir, "model_dir", out, value.Publish)
}

// publishModel translates an export that checks a model folder and
// publishes it to the Urza store h as a version of name (publish decides
// what a valid folder of its kind is); dirArg names the folder argument in
// errors.
func publishModel(h C.uint64_t, name, dir *C.char, dirArg string, out **C.char,
	publish func(*urza.Store, string, string) (urza.ModelVersion, error)) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		n, err := goString(name, "name")
		if err != nil {
			return err
		}
		d, err := goString(dir, dirArg)
		if err != nil {
			return err
		}
		v, err := publish(s, n, d)
		if err != nil {
			return err
		}
		return setJSON(out, v)
	})
}

//export esper_urza_models
func esper_urza_models(h C.uint64_t, name *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		n, err := goString(name, "name")
		if err != nil {
			return err
		}
		vs, err := s.ModelVersions(n)
		if err != nil {
			return err
		}
		return setJSON(out, vs)
	})
}
