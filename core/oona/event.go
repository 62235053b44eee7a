package oona

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// SchemaVersion is the version of the event schema (the "v" field of every
// event; docs/events.md). A change that renames or removes a field, or
// changes a field's meaning, bumps it; adding a field or a kind does not.
const SchemaVersion = 1

// Kind says what an event reports; its data has the schema of its kind
// (docs/events.md).
type Kind string

// The event kinds.
const (
	// KindRun: the run started, resumed from a checkpoint, or ended.
	KindRun Kind = "run"
	// KindLifecycle: a seed moved from one state to another.
	KindLifecycle Kind = "lifecycle"
	// KindDecision: a decision of the controller or the governor, with its
	// reason and whether it was applied.
	KindDecision Kind = "decision"
	// KindFailure: a seed failed (its forward raised, went non-finite, had
	// the wrong shape, or it could not be built).
	KindFailure Kind = "failure"
	// KindAlarm: an alarm: the governor's (a non-finite signal, an
	// exploding or non-finite loss) or one of Nissa's checks (step time,
	// seed failure rate, a stalled run, no improvement).
	KindAlarm Kind = "alarm"
	// KindEpoch: an epoch ended: its losses and metric, parameters,
	// seeds by state, counters.
	KindEpoch Kind = "epoch"
	// KindHealth: the health signals' rolling statistics, per layer, at
	// the end of an epoch.
	KindHealth Kind = "health"
	// KindArtifact: an artifact was published to Urza (a trained kernel,
	// a validated build).
	KindArtifact Kind = "artifact"
	// KindImpact: an adaptation ended and Nissa compared its predicted
	// gain with its measured contribution (or said why it could not).
	KindImpact Kind = "impact"
	// KindPolicy: the learned policy's value model changed version in a
	// rolling deployment: a switch to a newer published version, a revert
	// to the previous one, or a version refused (docs/simic.md).
	KindPolicy Kind = "policy"
)

var kinds = []Kind{KindRun, KindLifecycle, KindDecision, KindFailure, KindAlarm, KindEpoch, KindHealth, KindArtifact, KindImpact, KindPolicy}

// Kinds returns every event kind, in the order docs/events.md lists them.
func Kinds() []Kind { return append([]Kind(nil), kinds...) }

// Valid reports whether k is one of the kinds.
func (k Kind) Valid() bool {
	for _, v := range kinds {
		if k == v {
			return true
		}
	}
	return false
}

// Actor says who took the action an event reports: the run log is the
// audit trail.
type Actor string

// The actors.
const (
	// ActorPolicy: the controller (Tamiyo's heuristic, random or learned
	// policy) decided it.
	ActorPolicy Actor = "policy"
	// ActorGovernor: the safety governor did it (rollbacks, alarms).
	ActorGovernor Actor = "governor"
	// ActorManual: a manual call of the API (germinate, advance, prune,
	// fossilize, cancel).
	ActorManual Actor = "manual"
	// ActorSchedule: the lifecycle's own schedule (a step gate opened:
	// TRAINING -> BLENDING -> HOLDING, the embargo).
	ActorSchedule Actor = "schedule"
	// ActorBreaker: a seed's circuit breaker opened.
	ActorBreaker Actor = "breaker"
	// ActorTrainer: the training loop reported it (a seed failure, a seed
	// that did not build, the epoch's metrics, an artifact published).
	ActorTrainer Actor = "trainer"
	// ActorSystem: Esper itself (the run's start, resume and end).
	ActorSystem Actor = "system"
	// ActorNissa: the monitor (core/nissa) raised it: its alarms and the
	// impact records.
	ActorNissa Actor = "nissa"
)

var actors = []Actor{ActorPolicy, ActorGovernor, ActorManual, ActorSchedule, ActorBreaker, ActorTrainer, ActorSystem, ActorNissa}

// Valid reports whether a is one of the actors.
func (a Actor) Valid() bool {
	for _, v := range actors {
		if a == v {
			return true
		}
	}
	return false
}

// Header is what the publisher says about an event; the bus adds the rest.
type Header struct {
	// Kind is the event's kind; Actor who took the action.
	Kind  Kind
	Actor Actor
	// Step is the optimizer step and Epoch the epoch the event belongs to.
	Step  int64
	Epoch int
}

// Event is one published event. Events are shared between subscribers and
// must not be modified.
type Event struct {
	// V is the schema version (SchemaVersion).
	V int `json:"v"`
	// ID is unique across runs and processes ("<bus id>-<seq>"); NATS
	// deduplicates by it.
	ID string `json:"id"`
	// Seq numbers the bus's events from 1, in publication order.
	Seq uint64 `json:"seq"`
	// Run and Rank name the run and the process within it.
	Run  string `json:"run"`
	Rank int    `json:"rank"`
	// Step and Epoch say when in training; Time when on the wall clock
	// (UTC).
	Step  int64     `json:"step"`
	Epoch int       `json:"epoch"`
	Time  time.Time `json:"time"`
	// Kind says what happened and Actor who did it.
	Kind  Kind  `json:"kind"`
	Actor Actor `json:"actor"`
	// Data is the kind's payload, a JSON object (docs/events.md).
	Data json.RawMessage `json:"data"`

	line []byte // the whole event as one JSON line, '\n' included
}

// Line returns the event encoded as one JSON line, newline included (the
// run log's format). The caller must not modify it.
func (e *Event) Line() []byte { return e.line }

// Subject returns the NATS subject the event is published to:
// esper.v1.<run>.<rank>.<kind>.
func (e *Event) Subject() string {
	return "esper.v" + strconv.Itoa(SchemaVersion) + "." + e.Run + "." + strconv.Itoa(e.Rank) + "." + string(e.Kind)
}

// headroom is the room encodeData leaves before the data for the line's
// head (everything up to `"data":`): with a run id of MaxRunLen and every
// number at its widest the head takes about 400 bytes, so a line is built
// in the data's own buffer, with no second allocation or copy of the data
// (a health event's is kilobytes).
const headroom = 448

// encode fills e.line from buf, which holds headroom bytes of room and then
// the data (encodeData). Run, kind and actor are checked tokens, so only
// the id needs no quoting either (hex and digits).
func (e *Event) encode(buf []byte) {
	var hb [headroom]byte
	h := append(hb[:0], `{"v":`...)
	h = strconv.AppendInt(h, int64(e.V), 10)
	h = append(h, `,"id":"`...)
	h = append(h, e.ID...)
	h = append(h, `","seq":`...)
	h = strconv.AppendUint(h, e.Seq, 10)
	h = append(h, `,"run":"`...)
	h = append(h, e.Run...)
	h = append(h, `","rank":`...)
	h = strconv.AppendInt(h, int64(e.Rank), 10)
	h = append(h, `,"step":`...)
	h = strconv.AppendInt(h, e.Step, 10)
	h = append(h, `,"epoch":`...)
	h = strconv.AppendInt(h, int64(e.Epoch), 10)
	h = append(h, `,"time":"`...)
	h = e.Time.AppendFormat(h, time.RFC3339Nano)
	h = append(h, `","kind":"`...)
	h = append(h, e.Kind...)
	h = append(h, `","actor":"`...)
	h = append(h, e.Actor...)
	h = append(h, `","data":`...)
	data := buf[headroom:]
	var line []byte
	if len(h) <= headroom {
		line = buf[headroom-len(h):]
		copy(line, h)
		line = append(line, "}\n"...)
	} else { // a head wider than the room (not reachable with checked fields): a fresh line
		line = append(append(append(make([]byte, 0, len(h)+len(data)+2), h...), data...), "}\n"...)
	}
	e.Data = line[len(h) : len(line)-2 : len(line)-2]
	e.line = line
}

// MaxDataBytes bounds an event's data (a health summary of many layers is
// the largest an Esper run makes: about 1 KiB per layer).
const MaxDataBytes = 4 << 20

// Appender is event data that writes itself: AppendJSON appends one
// compact JSON object (no insignificant space, valid UTF-8) to b and
// returns the extended slice. The bus takes the bytes as they are, without
// encoding/json's reflection or a second pass to check them: an Appender
// owns that guarantee, and its tests hold it to encoding/json's output.
// The session's health event (hundreds of numbers at every end of epoch)
// is one.
type Appender interface {
	AppendJSON(b []byte) []byte
}

// encodeData returns headroom bytes of room (see encode) followed by data
// as a compact JSON object: an Appender's bytes as it writes them,
// json.RawMessage and []byte taken as JSON text (checked), anything else
// encoded with encoding/json.
func encodeData(data any) ([]byte, error) {
	var raw []byte
	switch d := data.(type) {
	case nil:
		return withRoom([]byte("{}")), nil
	case Appender:
		b := d.AppendJSON(make([]byte, headroom, headroom+256))
		obj := b[headroom:]
		if len(obj) > MaxDataBytes {
			return nil, fmt.Errorf("oona: data is %d bytes, limit %d: %w", len(obj), MaxDataBytes, ErrEvent)
		}
		if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
			return nil, fmt.Errorf("oona: data must encode as a JSON object, got %.20s: %w", obj, ErrEvent)
		}
		return b, nil
	case json.RawMessage:
		raw = d
	case []byte:
		raw = d
	default:
		b, err := json.Marshal(data)
		if err != nil {
			return nil, fmt.Errorf("oona: encode data: %v: %w", err, ErrEvent)
		}
		if len(b) == 0 || b[0] != '{' {
			return nil, fmt.Errorf("oona: data must encode as a JSON object, got %.20s: %w", b, ErrEvent)
		}
		return withRoom(b), nil
	}
	if len(raw) > MaxDataBytes {
		return nil, fmt.Errorf("oona: data is %d bytes, limit %d: %w", len(raw), MaxDataBytes, ErrEvent)
	}
	if !json.Valid(raw) || !utf8.Valid(raw) {
		return nil, fmt.Errorf("oona: data is not valid JSON in UTF-8: %w", ErrEvent)
	}
	buf := bytes.NewBuffer(make([]byte, headroom, headroom+len(raw)+2))
	if err := json.Compact(buf, raw); err != nil {
		return nil, fmt.Errorf("oona: data: %v: %w", err, ErrEvent)
	}
	if buf.Len() == headroom || buf.Bytes()[headroom] != '{' {
		return nil, fmt.Errorf("oona: data must be a JSON object: %w", ErrEvent)
	}
	return buf.Bytes(), nil
}

// withRoom returns headroom bytes of room followed by obj (and room for
// the line's end).
func withRoom(obj []byte) []byte {
	return append(make([]byte, headroom, headroom+len(obj)+2), obj...)
}
