//go:build !esper_nonats

package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/core/oona/natsink"
)

// The NATS exports and the NATS transport of esper_oona_new, in the default
// build (the NATS client linked in). oona_nonats.go holds the same exports
// for a library built with -tags esper_nonats, where each says so.

// natsBuilt says whether this library carries the NATS client (reported by
// esper_build_info as "nats").
const natsBuilt = true

// natsOpener is a parsed NATS transport configuration, opened on a node's
// bus once the node exists.
type natsOpener struct{ cfg natsink.Config }

// parseNATS decodes the "nats" section of an Oona node's configuration.
func parseNATS(raw json.RawMessage) (*natsOpener, error) {
	c, err := natsink.Parse(raw)
	if err != nil {
		return nil, err
	}
	return &natsOpener{cfg: c}, nil
}

// open connects the NATS sink to b.
func (o *natsOpener) open(b *oona.Bus) (oona.Transport, error) {
	sink, err := natsink.Open(b, o.cfg)
	if err != nil {
		return nil, err
	}
	return sink, nil
}

//export esper_oona_measure_nats
func esper_oona_measure_nats(url *C.char, events C.int64_t, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		u, err := goString(url, "url")
		if err != nil {
			return err
		}
		lat, err := natsink.MeasureLatency(u, int(events))
		if err != nil {
			return err
		}
		return setJSON(out, lat)
	})
}

// followPollLimit bounds the events one esper_oona_follow_poll returns.
const followPollLimit = 4096

//export esper_oona_follow_new
func esper_oona_follow_new(configJSON *C.char, out *C.uint64_t) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		doc, err := goString(configJSON, "config_json")
		if err != nil {
			return err
		}
		cfg, err := natsink.ParseFollow([]byte(doc))
		if err != nil {
			return err
		}
		f, err := natsink.Follow(cfg)
		if err != nil {
			return err
		}
		*out = C.uint64_t(handles.add(f))
		return nil
	})
}

//export esper_oona_follow_poll
func esper_oona_follow_poll(h C.uint64_t, timeoutMS C.int64_t, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		if timeoutMS < 0 || timeoutMS > 60_000 {
			return fmt.Errorf("oona follow poll: timeout_ms %d must be in [0, 60000]: %w", int64(timeoutMS), errcode.ErrInvalid)
		}
		f, err := lookup[*natsink.Follower](uint64(h))
		if err != nil {
			return err
		}
		b := f.Poll(handles.context(uint64(h)), time.Duration(timeoutMS)*time.Millisecond, followPollLimit)
		return setJSON(out, b)
	})
}

//export esper_oona_follow_free
func esper_oona_follow_free(h C.uint64_t) C.int {
	return call(0, func() error {
		if err := free[*natsink.Follower](uint64(h), func(f *natsink.Follower) error { f.Close(); return nil }); err != nil {
			return fmt.Errorf("oona follow free: %w", err)
		}
		lastErrors.drop(uint64(h))
		return nil
	})
}
