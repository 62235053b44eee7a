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
func DecodeStrict(data []byte, v any) error {
	if _, err := Canonicalize(data); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
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
