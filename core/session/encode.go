package session

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// AppendJSON appends r as json.Marshal encodes it, byte for byte, without
// its reflection: esper_session_end_epoch returns one at every end of
// epoch, and encoding/json's reflection and its second pass over the
// GERMINATED event's blueprint cost more than the rest of the call's
// encoding (tested against encoding/json with every field set). It fails
// where json.Marshal fails: an invalid state or op, a non-finite alpha or
// prediction.
func (r EpochResult) AppendJSON(b []byte) ([]byte, error) {
	b = strconv.AppendInt(append(b, `{"epoch":`...), int64(r.Epoch), 10)
	b = append(b, `,"decisions":`...)
	if r.Decisions == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range r.Decisions {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = r.Decisions[i].appendJSON(b); err != nil {
				return nil, err
			}
		}
		b = append(b, ']')
	}
	if len(r.Rollout) > 0 { // rare: a model version switched or refused
		rb, err := json.Marshal(r.Rollout)
		if err != nil {
			return nil, fmt.Errorf("session: encode rollout: %w", err)
		}
		b = append(append(b, `,"rollout":`...), rb...)
	}
	b = append(b, `,"events":`...)
	b, err := AppendEventsJSON(b, r.Events)
	if err != nil {
		return nil, err
	}
	return append(b, '}'), nil
}

// AppendEventsJSON appends evs as json.Marshal encodes the slice (null
// when nil), byte for byte; see EpochResult.AppendJSON.
func AppendEventsJSON(b []byte, evs []Event) ([]byte, error) {
	if evs == nil {
		return append(b, "null"...), nil
	}
	b = append(b, '[')
	for i := range evs {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = evs[i].appendJSON(b); err != nil {
			return nil, err
		}
	}
	return append(b, ']'), nil
}

func (e *Event) appendJSON(b []byte) ([]byte, error) {
	if !e.From.Valid() || !e.To.Valid() {
		return nil, fmt.Errorf("session: encode event %d/%d: %w", e.Layer, e.Slot, lifecycle.ErrUnknownState)
	}
	b = strconv.AppendInt(append(b, `{"layer":`...), int64(e.Layer), 10)
	b = strconv.AppendInt(append(b, `,"slot":`...), int64(e.Slot), 10)
	b = append(append(append(b, `,"from":"`...), e.From.String()...), '"') // state names: capitals and '_'
	b = append(append(append(b, `,"to":"`...), e.To.String()...), '"')
	b = strconv.AppendInt(append(b, `,"step":`...), e.Step, 10)
	b = strconv.AppendInt(append(b, `,"epoch":`...), int64(e.Epoch), 10)
	b, err := appendFloat(append(b, `,"alpha":`...), e.Alpha)
	if err != nil {
		return nil, fmt.Errorf("session: encode event %d/%d: alpha: %w", e.Layer, e.Slot, err)
	}
	b = nissa.AppendJSONString(append(b, `,"reason":`...), e.Reason)
	if e.BlueprintID != "" {
		b = nissa.AppendJSONString(append(b, `,"blueprint_id":`...), e.BlueprintID)
	}
	if len(e.Blueprint) > 0 {
		if b, err = appendRaw(append(b, `,"blueprint":`...), e.Blueprint); err != nil {
			return nil, fmt.Errorf("session: encode event %d/%d: blueprint: %w", e.Layer, e.Slot, err)
		}
	}
	if e.ParamCount != 0 {
		b = strconv.AppendInt(append(b, `,"param_count":`...), e.ParamCount, 10)
	}
	if e.Generation != 0 {
		b = strconv.AppendInt(append(b, `,"generation":`...), int64(e.Generation), 10)
	}
	return append(b, '}'), nil
}

func (d *DecisionResult) appendJSON(b []byte) ([]byte, error) {
	if !d.Op.Valid() {
		return nil, fmt.Errorf("session: encode decision: op %d: %w", uint8(d.Op), tamiyo.ErrState)
	}
	b = append(append(append(b, `{"op":"`...), d.Op.String()...), '"') // op names: lower-case letters
	b = strconv.AppendInt(append(b, `,"layer":`...), int64(d.Layer), 10)
	b = strconv.AppendInt(append(b, `,"slot":`...), int64(d.Slot), 10)
	if d.Template != "" {
		b = nissa.AppendJSONString(append(b, `,"template":`...), d.Template)
	}
	var err error
	if len(d.Params) > 0 {
		if b, err = appendParams(append(b, `,"params":`...), d.Params); err != nil {
			return nil, err
		}
	}
	if d.ParamCount != 0 {
		b = strconv.AppendInt(append(b, `,"param_count":`...), d.ParamCount, 10)
	}
	b = nissa.AppendJSONString(append(b, `,"reason":`...), d.Reason)
	for _, f := range [...]struct {
		key string
		v   *float64
	}{{`,"predicted_gain":`, d.PredictedGain}, {`,"predicted_value":`, d.PredictedValue}, {`,"value_estimate":`, d.ValueEstimate}} {
		if f.v == nil {
			continue
		}
		if b, err = appendFloat(append(b, f.key...), *f.v); err != nil {
			return nil, fmt.Errorf("session: encode decision: %s %w", f.key[2:len(f.key)-2], err)
		}
	}
	if d.Applied {
		b = append(b, `,"applied":true`...)
	} else {
		b = append(b, `,"applied":false`...)
	}
	if d.Error != "" {
		b = nissa.AppendJSONString(append(b, `,"error":`...), d.Error)
	}
	return append(b, '}'), nil
}

// appendParams appends template parameters as encoding/json encodes the
// map (keys sorted); values other than the integers, strings and booleans
// templates take go through encoding/json.
func appendParams(b []byte, p map[string]any) ([]byte, error) {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = append(b, '{')
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(nissa.AppendJSONString(b, k), ':')
		switch v := p[k].(type) {
		case int64:
			b = strconv.AppendInt(b, v, 10)
		case int:
			b = strconv.AppendInt(b, int64(v), 10)
		case string:
			b = nissa.AppendJSONString(b, v)
		case bool:
			b = strconv.AppendBool(b, v)
		default:
			vb, err := json.Marshal(v)
			if err != nil {
				return nil, fmt.Errorf("session: encode decision: params.%s: %w", k, err)
			}
			b = append(b, vb...)
		}
	}
	return append(b, '}'), nil
}

// appendFloat appends a finite v as encoding/json writes a float64
// (nissa.AppendJSONFloat); a non-finite v is an error, as in encoding/json.
func appendFloat(b []byte, v float64) ([]byte, error) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil, fmt.Errorf("unsupported value %v: %w", v, ErrArgument)
	}
	return nissa.AppendJSONFloat(b, v), nil
}

// appendRaw appends raw JSON as encoding/json encodes a json.RawMessage:
// as it is when it holds no insignificant space and nothing that
// encoding/json escapes (<, >, &, U+2028, U+2029), which is the case of a
// blueprint's canonical document; otherwise compacted and escaped by
// encoding/json (which also checks it). Raw bytes in an event come from
// the blueprint encoder or from a JSON decoder (a restored snapshot), so
// they are valid JSON.
func appendRaw(b []byte, raw json.RawMessage) ([]byte, error) {
	for _, c := range raw {
		switch c {
		case ' ', '\t', '\n', '\r', '<', '>', '&', 0xe2: // 0xe2 leads U+2028 and U+2029 in UTF-8
			rb, err := json.Marshal(raw)
			if err != nil {
				return nil, err
			}
			return append(b, rb...), nil
		}
	}
	return append(b, raw...), nil
}
