package canon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// DecodeStrict decodes the single JSON value in data into v, refusing what
// Canonicalize refuses (invalid UTF-8, duplicate keys, excessive nesting,
// trailing data) with ErrSyntax, and unknown object fields and values of
// the wrong type with ErrSchema, naming the field. Numbers decoded into
// interface values are json.Number.
//
// It is the one JSON decoder of Esper's Go code (the C ABI's arguments, the
// session config and snapshot, metrics, blueprints, manifests, indexes):
// every document is held to the same syntax, so a duplicate key is refused
// everywhere, never resolved by "the last one wins" in one place and
// refused in another.
func DecodeStrict(data []byte, v any) error {
	return decode(data, v, true)
}

// DecodeLenient is DecodeStrict that ignores unknown object fields: for
// documents written by another version of Esper (stored manifests, the
// store's index) that must stay readable. Its syntax is DecodeStrict's
// (duplicate keys and the rest are refused).
func DecodeLenient(data []byte, v any) error {
	return decode(data, v, false)
}

func decode(data []byte, v any, strict bool) error {
	if _, err := Canonicalize(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%w: field %q must be %v, got %s", ErrSchema, te.Field, te.Type, te.Value)
		}
		return fmt.Errorf("%w: %s", ErrSchema, strings.TrimPrefix(err.Error(), "json: "))
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the document", ErrSyntax)
	}
	return nil
}
