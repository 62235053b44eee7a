package cache

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Meta describes a cached artifact.
type Meta struct {
	// ID is the artifact id (the cache key).
	ID string `json:"id"`
	// InputShape is the input shape the kernel was built for; -1 marks a
	// dimension of any size (such as the batch).
	InputShape []int64 `json:"input_shape,omitempty"`
	// OutputShape is the kernel's output shape (informational).
	OutputShape []int64 `json:"output_shape,omitempty"`
	// Dtype is the tensor dtype, e.g. "float32" ("" matches any).
	Dtype string `json:"dtype,omitempty"`
	// Device is where the kernel runs: "cpu", "cuda", "cuda:1", ... ("" runs
	// anywhere). A device without an index ("cuda") fits any index.
	Device string `json:"device,omitempty"`
	// Size is the entry's size in bytes, counted against the bound. Put sets
	// it to len(data) when data is given; for an entry without data (an
	// object kept elsewhere) the caller states it.
	Size int64 `json:"size"`
	// Tags are free labels.
	Tags []string `json:"tags,omitempty"`
}

// Want is what a Get needs. Zero fields match anything.
type Want struct {
	// Shape is the input shape the caller will feed.
	Shape []int64 `json:"shape,omitempty"`
	// Dtype is the dtype the caller needs.
	Dtype string `json:"dtype,omitempty"`
	// Device is the device the caller runs on.
	Device string `json:"device,omitempty"`
}

// clone returns m with its slices copied.
func (m Meta) clone() Meta {
	m.InputShape = slices.Clone(m.InputShape)
	m.OutputShape = slices.Clone(m.OutputShape)
	m.Tags = slices.Clone(m.Tags)
	return m
}

func (m Meta) validate() error {
	if m.ID == "" || len(m.ID) > 256 {
		return fmt.Errorf("%w: id must be 1 to 256 bytes", ErrInvalid)
	}
	if m.Size < 0 {
		return fmt.Errorf("%w: %s: size %d is negative", ErrInvalid, m.ID, m.Size)
	}
	for _, shape := range [][]int64{m.InputShape, m.OutputShape} {
		for _, d := range shape {
			if d < -1 {
				return fmt.Errorf("%w: %s: shape %v has a dimension below -1", ErrInvalid, m.ID, shape)
			}
		}
	}
	return nil
}

// fits returns "" when the entry with metadata m can serve w, else the
// reason it cannot. It does not allocate when the entry fits.
func (m *Meta) fits(w *Want) string {
	if w.Dtype != "" && m.Dtype != "" && w.Dtype != m.Dtype {
		return "dtype " + m.Dtype + ", want " + w.Dtype
	}
	if w.Device != "" && !deviceFits(m.Device, w.Device) {
		return "device " + m.Device + ", want " + w.Device
	}
	if len(w.Shape) > 0 && len(m.InputShape) > 0 {
		if len(w.Shape) != len(m.InputShape) {
			return "input shape " + formatShape(m.InputShape) + ", want " + formatShape(w.Shape)
		}
		for i, d := range m.InputShape {
			if d != -1 && w.Shape[i] != -1 && d != w.Shape[i] {
				return "input shape " + formatShape(m.InputShape) + ", want " + formatShape(w.Shape)
			}
		}
	}
	return ""
}

// deviceFits reports whether an entry built for have can run on want.
func deviceFits(have, want string) bool {
	if have == "" || have == want {
		return true
	}
	// "cuda" fits "cuda:1"; "cuda:0" does not fit "cuda:1".
	return !strings.Contains(have, ":") && strings.HasPrefix(want, have+":")
}

func formatShape(s []int64) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
