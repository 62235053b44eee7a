package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"github.com/esper-morph/esper/core/session"
)

// A flush's one call: esper_session_step and esper_session_waiting's reads
// together, so that a trainer's step that carries signals crosses the ABI
// once (a call after a pause in Go costs the scheduler's slow path; a second
// call right after it is cheap but not free). Translation only.

//export esper_session_step_waiting
func esper_session_step_waiting(h C.uint64_t, steps C.int64_t, signals *C.float, nSignals C.size_t,
	alphasOut *C.float, alphasCap C.size_t, outNEvents *C.int32_t, outAlarms *C.int64_t,
	outReports *C.int32_t) C.int {
	return call(uint64(h), func() error {
		if outNEvents == nil || outAlarms == nil || outReports == nil {
			return errNull("out_n_events, out_alarms and out_reports")
		}
		if signals == nil && nSignals > 0 {
			return errNull("signals")
		}
		if alphasOut == nil && alphasCap > 0 {
			return errNull("alphas_out")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		n, err := s.Step(int64(steps), float32s(signals, nSignals), float32s(alphasOut, alphasCap))
		if err != nil {
			return err
		}
		alarms, reports, err := s.Waiting()
		if err != nil {
			return err
		}
		*outNEvents = C.int32_t(min(n, 1<<31-1))
		*outAlarms, *outReports = C.int64_t(alarms), C.int32_t(min(reports, 1<<31-1))
		return nil
	})
}
