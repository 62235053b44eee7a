package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

// A flush's one call: esper_session_step and esper_session_waiting's reads
// together, so that a trainer's step that carries signals crosses the ABI
// once (a call after a pause in Go costs the scheduler's slow path; a second
// call right after it is cheap but not free). Translation only.

//export esper_session_step_waiting
func esper_session_step_waiting(h C.uint64_t, steps C.int64_t, signals *C.float, nSignals C.size_t,
	alphasOut *C.float, alphasCap C.size_t, outNEvents *C.int32_t, outAlarms *C.int64_t,
	outReports *C.int32_t) C.int {
	return call(uint64(h), func() error {
		if outAlarms == nil || outReports == nil {
			return errNull("out_alarms and out_reports")
		}
		s, err := step(h, steps, signals, nSignals, alphasOut, alphasCap, outNEvents)
		if err != nil {
			return err
		}
		return writeWaiting(s, outAlarms, outReports)
	})
}
