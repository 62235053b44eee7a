//go:build esper_nonats

package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"encoding/json"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/oona"
)

// The NATS exports of a library built without the NATS client (go build
// -tags esper_nonats; make nonats-lib writes build/nonats/libesper.so): the
// same symbols as the default build (oona_nats.go), each refusing with
// errNoNATS. The bus and the run log work as in the default build.

// natsBuilt says whether this library carries the NATS client (reported by
// esper_build_info as "nats").
const natsBuilt = false

// errNoNATS is what every NATS call returns in this build.
var errNoNATS = errcode.New(errcode.Unavailable,
	"oona: this libesper was built without the NATS client (go build -tags esper_nonats): "+
		"no NATS transport, follower or measurement; use the default build (make lib) for NATS")

// natsOpener is never made in this build.
type natsOpener struct{}

// parseNATS refuses any NATS configuration.
func parseNATS(json.RawMessage) (*natsOpener, error) { return nil, errNoNATS }

// open is never reached (parseNATS refuses first).
func (*natsOpener) open(*oona.Bus) (oona.Transport, error) { return nil, errNoNATS }

//export esper_oona_measure_nats
func esper_oona_measure_nats(url *C.char, events C.int64_t, out **C.char) C.int {
	return call(0, func() error { return errNoNATS })
}

//export esper_oona_follow_new
func esper_oona_follow_new(configJSON *C.char, out *C.uint64_t) C.int {
	return call(0, func() error { return errNoNATS })
}

//export esper_oona_follow_poll
func esper_oona_follow_poll(h C.uint64_t, timeoutMS C.int64_t, out **C.char) C.int {
	return call(uint64(h), func() error { return errNoNATS })
}

//export esper_oona_follow_free
func esper_oona_follow_free(h C.uint64_t) C.int {
	return call(0, func() error { return errNoNATS })
}
