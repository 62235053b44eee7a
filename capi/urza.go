package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"

	"github.com/esper-morph/esper/core/urza"
)

// Urza's exports: translation only, see core/urza.

//export esper_urza_open
func esper_urza_open(root *C.char, out *C.uint64_t) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		dir := optString(root)
		if dir == "" {
			var err error
			if dir, err = defaultUrzaRoot(); err != nil {
				return err
			}
		}
		s, err := urza.Open(dir, nil)
		if err != nil {
			return err
		}
		*out = C.uint64_t(handles.add(s))
		return nil
	})
}

//export esper_urza_close
func esper_urza_close(h C.uint64_t) C.int {
	return call(0, func() error {
		if err := free[*urza.Store](uint64(h), (*urza.Store).Close); err != nil {
			return fmt.Errorf("urza close: %w", err)
		}
		lastErrors.drop(uint64(h))
		return nil
	})
}

//export esper_urza_root
func esper_urza_root(h C.uint64_t, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_root")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		setString(out, s.Root())
		return nil
	})
}

//export esper_urza_put
func esper_urza_put(h C.uint64_t, manifestJSON *C.char, weights *C.uint8_t, n C.size_t, outID **C.char) C.int {
	return call(uint64(h), func() error {
		if outID == nil {
			return errNull("out_id")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		m, err := goString(manifestJSON, "manifest_json")
		if err != nil {
			return err
		}
		w, err := viewBytes(weights, n, "weights")
		if err != nil {
			return err
		}
		id, err := s.Put([]byte(m), w)
		if err != nil {
			return err
		}
		setString(outID, id)
		return nil
	})
}

//export esper_urza_get
func esper_urza_get(h C.uint64_t, id *C.char, outManifest **C.char, outWeights **C.uint8_t, outN *C.size_t) C.int {
	return call(uint64(h), func() error {
		switch {
		case outManifest == nil:
			return errNull("out_manifest")
		case outWeights == nil:
			return errNull("out_weights")
		case outN == nil:
			return errNull("out_n")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		key, err := goString(id, "id")
		if err != nil {
			return err
		}
		a, err := s.Get(key)
		if err != nil {
			return err
		}
		setString(outManifest, string(a.ManifestJSON))
		setBytes(outWeights, outN, a.Weights)
		return nil
	})
}

//export esper_urza_stat
func esper_urza_stat(h C.uint64_t, id *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		key, err := goString(id, "id")
		if err != nil {
			return err
		}
		info, err := s.Stat(key)
		if err != nil {
			return err
		}
		return setJSON(out, info)
	})
}

//export esper_urza_list
func esper_urza_list(h C.uint64_t, queryJSON *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		q, err := urza.ParseQuery([]byte(optString(queryJSON)))
		if err != nil {
			return fmt.Errorf("urza list: %w", err)
		}
		infos, err := s.List(q)
		if err != nil {
			return err
		}
		if infos == nil {
			infos = []urza.Info{}
		}
		return setJSON(out, infos)
	})
}

//export esper_urza_verify
func esper_urza_verify(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_report_json", func(s *urza.Store) (any, error) {
		return s.Verify(handles.context(uint64(h)))
	})
}

//export esper_urza_gc
func esper_urza_gc(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_report_json", func(s *urza.Store) (any, error) {
		return s.GC(handles.context(uint64(h)))
	})
}

//export esper_urza_delete
func esper_urza_delete(h C.uint64_t, id *C.char) C.int {
	return call(uint64(h), func() error {
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		key, err := goString(id, "id")
		if err != nil {
			return err
		}
		return s.Delete(key)
	})
}

//export esper_urza_put_outcome
func esper_urza_put_outcome(h C.uint64_t, recordJSON *C.char, outKey **C.char) C.int {
	return putRecord(h, recordJSON, outKey, (*urza.Store).PutOutcome)
}

// putRecord stores one JSON record through put (Go validates it) and
// returns its key: the body of the esper_urza_put_* exports.
func putRecord(h C.uint64_t, recordJSON *C.char, outKey **C.char, put func(*urza.Store, []byte) (string, error)) C.int {
	return call(uint64(h), func() error {
		if outKey == nil {
			return errNull("out_key")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		rec, err := goString(recordJSON, "record_json")
		if err != nil {
			return err
		}
		key, err := put(s, []byte(rec))
		if err != nil {
			return err
		}
		setString(outKey, key)
		return nil
	})
}

//export esper_urza_outcomes
func esper_urza_outcomes(h C.uint64_t, run *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*urza.Store](uint64(h))
		if err != nil {
			return err
		}
		recs, err := s.Outcomes(optString(run))
		if err != nil {
			return err
		}
		return setJSON(out, recs)
	})
}

//export esper_urza_runs
func esper_urza_runs(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", func(s *urza.Store) (any, error) {
		return s.Runs()
	})
}
