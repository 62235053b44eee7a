package cache

import (
	"bytes"
	"fmt"

	"github.com/esper-morph/esper/blueprint/canon"
)

// maxDoc bounds a metadata or want document.
const maxDoc = 64 << 10

// ParseMeta decodes a Meta document strictly (unknown fields, duplicate
// keys and trailing data are refused) and validates it.
func ParseMeta(data []byte) (Meta, error) {
	var m Meta
	if err := decodeStrict(data, "meta", &m); err != nil {
		return Meta{}, err
	}
	if err := m.validate(); err != nil {
		return Meta{}, err
	}
	return m, nil
}

// ParseWant decodes a Want document strictly. An empty document or "null"
// is the zero Want (anything fits).
func ParseWant(data []byte) (Want, error) {
	var w Want
	if len(bytes.TrimSpace(data)) == 0 {
		return w, nil
	}
	if err := decodeStrict(data, "want", &w); err != nil {
		return Want{}, err
	}
	return w, nil
}

func decodeStrict(data []byte, what string, v any) error {
	if len(data) > maxDoc {
		return fmt.Errorf("%w: %s document is %d bytes, limit %d", ErrInvalid, what, len(data), maxDoc)
	}
	if err := canon.DecodeStrict(data, v); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, what, err)
	}
	return nil
}
