package main

/*
#include <stdint.h>
*/
import "C"

import (
	"encoding/json"

	"github.com/esper-morph/esper/core/urza"
)

// Urza's experience records (core/urza, experience.go): translation only.

//export esper_urza_put_experience
func esper_urza_put_experience(h C.uint64_t, recordJSON *C.char, outKey **C.char) C.int {
	return putRecord(h, recordJSON, outKey, (*urza.Store).PutExperience)
}

//export esper_urza_experience
func esper_urza_experience(h C.uint64_t, run *C.char, out **C.char) C.int {
	return queryJSON(h, out, "out_json", func(s *urza.Store) ([]json.RawMessage, error) {
		name, err := goString(run, "trainer_run")
		if err != nil {
			return nil, err
		}
		return s.Experience(name)
	})
}

//export esper_urza_experience_runs
func esper_urza_experience_runs(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", func(s *urza.Store) ([]urza.ExperienceRun, error) {
		return s.ExperienceRuns()
	})
}
