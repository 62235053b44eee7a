package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"strings"

	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// Session exports: translation only, see core/session (and policy/tamiyo
// for the metrics document).

// sessionEvents writes events as a JSON array ("[]" when none).
func sessionEvents(out **C.char, evs []session.Event) error {
	if evs == nil {
		evs = []session.Event{}
	}
	return setAppended(out, func(b []byte) ([]byte, error) { return session.AppendEventsJSON(b, evs) })
}

//export esper_session_defaults
func esper_session_defaults(out **C.char) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out_json")
		}
		c, err := session.DefaultConfig()
		if err != nil {
			return err
		}
		return setJSON(out, c)
	})
}

//export esper_session_new
func esper_session_new(configJSON *C.char, out *C.uint64_t) C.int {
	return call(0, func() error {
		if out == nil {
			return errNull("out")
		}
		doc, err := goString(configJSON, "config_json")
		if err != nil {
			return err
		}
		cfg, err := session.ParseConfig([]byte(doc))
		if err != nil {
			return err
		}
		_, rolling := strings.CutPrefix(cfg.Controller.ValueModel, session.UrzaModelPrefix)
		if (cfg.Controller.Search || rolling) && cfg.Urza == "" {
			if cfg.Urza, err = defaultUrzaRoot(); err != nil {
				return err
			}
		}
		cache, err := modelCacheDir()
		if err != nil {
			return err
		}
		s, err := session.New(cfg, session.WithModelCache(cache))
		if err != nil {
			return err
		}
		*out = C.uint64_t(handles.add(s))
		return nil
	})
}

//export esper_session_free
func esper_session_free(h C.uint64_t) C.int {
	return call(0, func() error {
		if err := free[*session.Session](uint64(h), (*session.Session).Close); err != nil {
			return fmt.Errorf("session free: %w", err)
		}
		lastErrors.drop(uint64(h))
		return nil
	})
}

//export esper_session_step
func esper_session_step(h C.uint64_t, steps C.int64_t, signals *C.float, nSignals C.size_t,
	alphasOut *C.float, alphasCap C.size_t, outNEvents *C.int32_t) C.int {
	return call(uint64(h), func() error {
		_, err := step(h, steps, signals, nSignals, alphasOut, alphasCap, outNEvents)
		return err
	})
}

// step checks esper_session_step's arguments, runs the session's step and
// writes its event count; it returns the session for a caller that reads
// more (esper_session_step_waiting).
func step(h C.uint64_t, steps C.int64_t, signals *C.float, nSignals C.size_t,
	alphasOut *C.float, alphasCap C.size_t, outNEvents *C.int32_t) (*session.Session, error) {
	if outNEvents == nil {
		return nil, errNull("out_n_events")
	}
	if signals == nil && nSignals > 0 {
		return nil, errNull("signals")
	}
	if alphasOut == nil && alphasCap > 0 {
		return nil, errNull("alphas_out")
	}
	s, err := lookup[*session.Session](uint64(h))
	if err != nil {
		return nil, err
	}
	n, err := s.Step(int64(steps), float32s(signals, nSignals), float32s(alphasOut, alphasCap))
	if err != nil {
		return nil, err
	}
	*outNEvents = C.int32_t(min(n, 1<<31-1))
	return s, nil
}

//export esper_session_alphas_ahead
func esper_session_alphas_ahead(h C.uint64_t, n C.int32_t, out *C.float, outCap C.size_t) C.int {
	return call(uint64(h), func() error {
		if out == nil && outCap > 0 {
			return errNull("out")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		return s.AlphasAhead(int(n), float32s(out, outCap))
	})
}

//export esper_session_alarms
func esper_session_alarms(h C.uint64_t, outAlarms *C.int64_t) C.int {
	return call(uint64(h), func() error {
		if outAlarms == nil {
			return errNull("out_alarms")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		n, err := s.Alarms()
		if err != nil {
			return err
		}
		*outAlarms = C.int64_t(n)
		return nil
	})
}

//export esper_session_events
func esper_session_events(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", func(s *session.Session) ([]session.Event, error) {
		evs, err := s.Events()
		if evs == nil {
			evs = []session.Event{} // "[]", never "null"
		}
		return evs, err
	})
}

//export esper_session_end_epoch
func esper_session_end_epoch(h C.uint64_t, metricsJSON *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		doc, err := goString(metricsJSON, "metrics_json")
		if err != nil {
			return err
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		m, err := tamiyo.ParseMetrics([]byte(doc))
		if err != nil {
			return err
		}
		res, err := s.EndEpoch(m)
		if err != nil {
			return err
		}
		return setAppended(out, res.AppendJSON)
	})
}

//export esper_session_germinate
func esper_session_germinate(h C.uint64_t, layer, slot C.int32_t, blueprintJSON *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		doc, err := goString(blueprintJSON, "blueprint_json")
		if err != nil {
			return err
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		evs, err := s.GerminateSpec(int(layer), int(slot), []byte(doc))
		if err != nil {
			return err
		}
		return sessionEvents(out, evs)
	})
}

// sessionMove is the body of the four manual transition exports.
func sessionMove(h C.uint64_t, layer, slot C.int32_t, reason *C.char, out **C.char,
	move func(s *session.Session, layer, slot int, reason string) ([]session.Event, error)) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		evs, err := move(s, int(layer), int(slot), optString(reason))
		if err != nil {
			return err
		}
		return sessionEvents(out, evs)
	})
}

//export esper_session_advance
func esper_session_advance(h C.uint64_t, layer, slot C.int32_t, reason *C.char, out **C.char) C.int {
	return sessionMove(h, layer, slot, reason, out, (*session.Session).Advance)
}

//export esper_session_prune
func esper_session_prune(h C.uint64_t, layer, slot C.int32_t, reason *C.char, out **C.char) C.int {
	return sessionMove(h, layer, slot, reason, out, (*session.Session).Prune)
}

//export esper_session_fossilize
func esper_session_fossilize(h C.uint64_t, layer, slot C.int32_t, reason *C.char, out **C.char) C.int {
	return sessionMove(h, layer, slot, reason, out, (*session.Session).Fossilize)
}

//export esper_session_cancel
func esper_session_cancel(h C.uint64_t, layer, slot C.int32_t, reason *C.char, out **C.char) C.int {
	return sessionMove(h, layer, slot, reason, out, (*session.Session).Cancel)
}

//export esper_session_report_failure
func esper_session_report_failure(h C.uint64_t, layer, slot, kind C.int32_t, msg *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		evs, err := s.ReportFailure(int(layer), int(slot), session.FailureKind(kind), optString(msg))
		if err != nil {
			return err
		}
		return sessionEvents(out, evs)
	})
}

//export esper_session_seed_failed
func esper_session_seed_failed(h C.uint64_t, layer, slot, generation C.int32_t, reason *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		evs, err := s.SeedFailed(int(layer), int(slot), int(generation), optString(reason))
		if err != nil {
			return err
		}
		return sessionEvents(out, evs)
	})
}

//export esper_session_snapshot
func esper_session_snapshot(h C.uint64_t, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		b, err := s.Snapshot()
		if err != nil {
			return err
		}
		setString(out, string(b))
		return nil
	})
}

//export esper_session_restore
func esper_session_restore(h C.uint64_t, snapshotJSON *C.char) C.int {
	return call(uint64(h), func() error {
		doc, err := goString(snapshotJSON, "snapshot_json")
		if err != nil {
			return err
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		return s.Restore([]byte(doc))
	})
}

//export esper_session_apply
func esper_session_apply(h C.uint64_t, snapshotJSON *C.char) C.int {
	return call(uint64(h), func() error {
		doc, err := goString(snapshotJSON, "snapshot_json")
		if err != nil {
			return err
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		return s.Apply([]byte(doc))
	})
}

//export esper_session_stats
func esper_session_stats(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", (*session.Session).Stats)
}

//export esper_session_seeds
func esper_session_seeds(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", (*session.Session).Seeds)
}

//export esper_session_growth_log
func esper_session_growth_log(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", (*session.Session).GrowthLog)
}

//export esper_session_state_hash
func esper_session_state_hash(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", (*session.Session).StateHash)
}

//export esper_session_graph
func esper_session_graph(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", (*session.Session).Graph)
}

//export esper_session_propose
func esper_session_propose(h C.uint64_t, proposalJSON *C.char, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_json")
		}
		doc, err := goString(proposalJSON, "proposal_json")
		if err != nil {
			return err
		}
		p, err := session.ParseProposal([]byte(doc))
		if err != nil {
			return err
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		res, err := s.Propose(p)
		if err != nil {
			return err
		}
		return setJSON(out, res)
	})
}
