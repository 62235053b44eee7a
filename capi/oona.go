package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"os"
	"time"

	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/core/session"
)

// Oona exports: translation only, see core/oona (the bus and run log) and
// core/session (what a session publishes).

// oonaCloseTimeout bounds how long esper_oona_free waits for the run log.
const oonaCloseTimeout = 10 * time.Second

// runsRoot returns the default runs root under the ESPER_HOME given to
// esper_init, or the environment's when none was given.
func runsRoot() (string, error) {
	homeMu.Lock()
	home := esperHome
	homeMu.Unlock()
	if home == nil {
		return oona.RunsRoot(os.Getenv("ESPER_HOME"))
	}
	return oona.RunsRoot(*home)
}

//export esper_oona_new
func esper_oona_new(configJSON *C.char, out *C.uint64_t) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		doc, err := goString(configJSON, "config_json")
		if err != nil {
			return err
		}
		cfg, err := oona.ParseNodeConfig([]byte(doc))
		if err != nil {
			return err
		}
		if cfg.Home == "" {
			if cfg.Home, err = runsRoot(); err != nil {
				return err
			}
		}
		var natsOn *natsOpener
		if len(cfg.NATS) > 0 && string(cfg.NATS) != "null" {
			if natsOn, err = parseNATS(cfg.NATS); err != nil {
				return err
			}
		}
		n, err := oona.OpenNode(cfg)
		if err != nil {
			return err
		}
		if natsOn != nil {
			if n.NATS, err = natsOn.open(n.Bus); err != nil {
				_ = n.Close(oonaCloseTimeout)
				return err
			}
		}
		*out = C.uint64_t(handles.add(n))
		return nil
	})
}

//export esper_oona_free
func esper_oona_free(h C.uint64_t) C.int {
	return call(0, func() error {
		if err := free[*oona.Node](uint64(h), func(n *oona.Node) error { return n.Close(oonaCloseTimeout) }); err != nil {
			return fmt.Errorf("oona free: %w", err)
		}
		lastErrors.drop(uint64(h))
		return nil
	})
}

//export esper_oona_stats
func esper_oona_stats(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", func(n *oona.Node) (oona.NodeStats, error) { return n.Stats(), nil })
}

//export esper_oona_flush
func esper_oona_flush(h C.uint64_t, timeoutMS C.int64_t) C.int {
	return call(uint64(h), func() error {
		if timeoutMS < 1 || timeoutMS > 3_600_000 {
			return fmt.Errorf("oona flush: timeout_ms %d must be in [1, 3600000]: %w", int64(timeoutMS), errcode.ErrInvalid)
		}
		n, err := lookup[*oona.Node](uint64(h))
		if err != nil {
			return err
		}
		return n.Log.Flush(time.Duration(timeoutMS) * time.Millisecond)
	})
}

//export esper_oona_publish
func esper_oona_publish(h C.uint64_t, kind, actor *C.char, step C.int64_t, epoch C.int32_t, dataJSON *C.char) C.int {
	return call(uint64(h), func() error {
		k, err := goString(kind, "kind")
		if err != nil {
			return err
		}
		a, err := goString(actor, "actor")
		if err != nil {
			return err
		}
		data := optString(dataJSON)
		n, err := lookup[*oona.Node](uint64(h))
		if err != nil {
			return err
		}
		var raw []byte
		if data != "" {
			raw = []byte(data)
		}
		_, err = n.Bus.Publish(oona.Header{Kind: oona.Kind(k), Actor: oona.Actor(a), Step: int64(step), Epoch: int(epoch)}, raw)
		return err
	})
}

//export esper_oona_runs_root
func esper_oona_runs_root(out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		root, err := runsRoot()
		if err != nil {
			return err
		}
		setString(out, root)
		return nil
	})
}

//export esper_oona_measure
func esper_oona_measure(events C.int64_t, subscribers C.int32_t, dir *C.char, out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		th, err := oona.Measure(int(events), int(subscribers), optString(dir))
		if err != nil {
			return err
		}
		return setJSON(out, th)
	})
}

//export esper_session_attach_oona
func esper_session_attach_oona(h C.uint64_t, oonaHandle C.uint64_t) C.int {
	return call(uint64(h), func() error {
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		if oonaHandle == 0 {
			return s.AttachBus(nil)
		}
		n, err := lookup[*oona.Node](uint64(oonaHandle))
		if err != nil {
			return fmt.Errorf("attach oona %d: %w", uint64(oonaHandle), err)
		}
		return s.AttachBus(n.Bus)
	})
}
