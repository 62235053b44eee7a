package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"errors"
	"fmt"

	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/urza"
)

// Karn's search exports: translation only, see blueprint/karn.

// historyStore opens the store a Karn call reads history from: none for a
// NULL root, the default store for "", else root. The caller closes it.
func historyStore(root *C.char) (*urza.Store, error) {
	if root == nil {
		return nil, nil
	}
	dir := C.GoString(root)
	if dir == "" {
		var err error
		if dir, err = defaultUrzaRoot(); err != nil {
			return nil, err
		}
	}
	return urza.Open(dir, nil)
}

//export esper_karn_search
func esper_karn_search(requestJSON, root *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		doc, err := goString(requestJSON, "request_json")
		if err != nil {
			return err
		}
		req, err := karn.ParseRequest([]byte(doc))
		if err != nil {
			return fmt.Errorf("karn search: %w", err)
		}
		store, err := historyStore(root)
		if err != nil {
			return fmt.Errorf("karn search: %w", err)
		}
		var svc *karn.Service
		if store != nil {
			defer store.Close()
			svc = karn.NewService(store)
			if err := svc.Refresh(); err != nil {
				return fmt.Errorf("karn search: %w", err)
			}
		} else {
			svc = karn.NewService(nil)
		}
		ans, err := svc.Answer(req)
		if err != nil {
			return fmt.Errorf("karn search: %w", err)
		}
		return setJSON(out, ans)
	})
}

// predictorReport is what esper_karn_predictor_eval returns.
type predictorReport struct {
	Records  int        `json:"records"`
	Measured int        `json:"measured"`
	Runs     int        `json:"runs"`
	Eval     *karn.Eval `json:"eval"`
	Note     string     `json:"note"`
	Features []string   `json:"features"`
	Min      [2]int     `json:"min_records_runs"`
}

//export esper_karn_predictor_eval
func esper_karn_predictor_eval(root *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		if root == nil {
			return errNull("root")
		}
		store, err := historyStore(root)
		if err != nil {
			return fmt.Errorf("karn predictor eval: %w", err)
		}
		defer store.Close()
		recs, err := store.Outcomes("")
		if err != nil {
			return fmt.Errorf("karn predictor eval: %w", err)
		}
		trials, _, err := karn.TrialsFromOutcomes(recs)
		if err != nil {
			return fmt.Errorf("karn predictor eval: %w", err)
		}
		runs := map[string]bool{}
		for _, t := range trials {
			runs[t.Run] = true
		}
		rep := predictorReport{Records: len(recs), Measured: len(trials), Runs: len(runs), Features: karn.FeatureNames(),
			Min: [2]int{karn.MinRecords, karn.MinRuns}}
		e, err := karn.Evaluate(trials)
		switch {
		case err == nil:
			rep.Eval = &e
			rep.Note = fmt.Sprintf("each record predicted by a ridge regression fitted on the other %d folds' runs only", e.Folds-1)
		case errors.Is(err, karn.ErrTooFew):
			rep.Note = err.Error() + "; Karn ranks by the prior: " + karn.Prior
		default:
			return fmt.Errorf("karn predictor eval: %w", err)
		}
		return setJSON(out, rep)
	})
}

//export esper_karn_predictor_fit
func esper_karn_predictor_fit(root, outDir *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		if root == nil {
			return errNull("root")
		}
		dir, err := goString(outDir, "out_dir")
		if err != nil {
			return err
		}
		store, err := historyStore(root)
		if err != nil {
			return fmt.Errorf("karn fit: %w", err)
		}
		defer store.Close()
		p, err := karn.FitFromStore(store, dir)
		if err != nil {
			return err
		}
		return setJSON(out, map[string]any{"dir": dir, "records": p.Records, "runs": p.Runs})
	})
}

//export esper_karn_publish
func esper_karn_publish(h C.uint64_t, name, predictorDir *C.char, out **C.char) C.int {
	return publishModel(h, name, predictorDir, "predictor_dir", out, karn.PublishPredictor)
}
