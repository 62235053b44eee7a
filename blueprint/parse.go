package blueprint

import (
	"bytes"
	"fmt"

	"github.com/esper-morph/esper/blueprint/canon"
)

// maxSmallDoc bounds host, params and budget documents.
const maxSmallDoc = 64 << 10

// ParseHost decodes and validates a host document strictly.
func ParseHost(data []byte) (Host, error) {
	var h Host
	if err := decodeDoc(data, maxSmallDoc, "host", &h); err != nil {
		return Host{}, err
	}
	if err := h.Validate(); err != nil {
		return Host{}, err
	}
	return h, nil
}

// ParseParams decodes a template parameter object strictly: values must be
// integers, strings or booleans. An empty document or "null" gives nil (all
// defaults).
func ParseParams(data []byte) (Params, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil
	}
	var p Params
	if err := decodeDoc(data, maxSmallDoc, "params", &p); err != nil {
		return nil, err
	}
	if err := normalizeValues(p, func(k string) string { return fmt.Sprintf("params.%s", k) }); err != nil {
		return nil, err
	}
	return p, nil
}

// ParseBudget decodes a budget document strictly. An empty document or
// "null" is the zero Budget (no limits).
func ParseBudget(data []byte) (Budget, error) {
	var b Budget
	if len(bytes.TrimSpace(data)) == 0 {
		return b, nil
	}
	if err := decodeDoc(data, maxSmallDoc, "budget", &b); err != nil {
		return Budget{}, err
	}
	if b.MaxParams < 0 || b.MaxFLOPs < 0 {
		return Budget{}, fmt.Errorf("%w: budget limits must be >= 0 (max_params %d, max_flops %d)", ErrInvalid, b.MaxParams, b.MaxFLOPs)
	}
	return b, nil
}

// decodeDoc checks the size of data, then decodes it strictly into v.
func decodeDoc(data []byte, limit int, what string, v any) error {
	if len(data) > limit {
		return fmt.Errorf("%w: %s document is %d bytes, limit %d", ErrInvalid, what, len(data), limit)
	}
	if err := canon.DecodeStrict(data, v); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalid, what, err)
	}
	return nil
}
