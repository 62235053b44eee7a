package urza

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/canon"
)

// Limits on manifests.
const (
	// MaxManifestBytes is the largest manifest document accepted.
	MaxManifestBytes = 4 << 20
	maxTags          = 64
	maxTagLen        = 64
	maxRank          = 8
	maxDeviceLen     = 64
)

// Dtypes are the accepted manifest dtypes (torch names without "torch.").
var dtypes = []string{"float32", "float16", "bfloat16", "float64", "int8", "uint8"}

// Manifest describes an artifact (docs/internals.md).
type Manifest struct {
	// BlueprintID is the id of Blueprint; Put fills it when empty.
	BlueprintID string `json:"blueprint_id"`
	// Blueprint is the IR the kernel was built from (stored canonical).
	Blueprint json.RawMessage `json:"blueprint"`
	// InputShape and OutputShape are the kernel's shapes; -1 marks a
	// dimension of any size (such as the batch).
	InputShape  []int64 `json:"input_shape"`
	OutputShape []int64 `json:"output_shape"`
	// Dtype is one of float32, float16, bfloat16, float64, int8, uint8.
	Dtype string `json:"dtype"`
	// ParamCount is the built module's parameter count; it must equal the
	// blueprint's (Put fills it when 0).
	ParamCount int64 `json:"param_count"`
	// Device is where the kernel runs: "cpu", "cuda", "cuda:0", "any", ...
	Device string `json:"device"`
	// Validation is Tezzeret's validation report (a JSON object).
	Validation json.RawMessage `json:"validation,omitempty"`
	// Lineage records where the artifact came from (a JSON object).
	Lineage json.RawMessage `json:"lineage,omitempty"`
	// Tags are free labels; Put sorts them and drops duplicates.
	Tags []string `json:"tags,omitempty"`
	// WeightsSHA256 and WeightsSize describe the weights; Put fills them
	// when empty and checks them otherwise.
	WeightsSHA256 string `json:"weights_sha256"`
	WeightsSize   int64  `json:"weights_size"`
}

// ParseManifest decodes a manifest as Put receives it: strictly (unknown
// fields, duplicate keys and trailing data are refused) and validated, with
// the blueprint parsed and its id and param count checked or filled in. The
// weights fields are checked for form only; Put checks them against the
// weights. Errors wrap ErrInvalidManifest.
func ParseManifest(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidManifest, len(data), MaxManifestBytes)
	}
	var m Manifest
	if err := canon.DecodeStrict(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if err := m.normalize(); err != nil {
		return nil, err
	}
	return &m, nil
}

// normalize validates m and brings it to canonical form: blueprint parsed
// and canonical, ids and counts filled, tags sorted and unique, empty
// objects dropped.
func (m *Manifest) normalize() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidManifest, fmt.Sprintf(format, args...))
	}
	if isNull(m.Blueprint) {
		return bad("blueprint is required")
	}
	ir, err := blueprint.Parse(m.Blueprint)
	if err != nil {
		return fmt.Errorf("%w: blueprint: %w", ErrInvalidManifest, err)
	}
	irBytes, err := ir.Canonical()
	if err != nil {
		return fmt.Errorf("%w: blueprint: %w", ErrInvalidManifest, err)
	}
	m.Blueprint = irBytes
	id := canon.ID(irBytes)
	switch m.BlueprintID {
	case "":
		m.BlueprintID = id
	case id:
	default:
		return bad("blueprint_id %q is not the blueprint's id %s", m.BlueprintID, id)
	}
	switch m.ParamCount {
	case 0:
		m.ParamCount = ir.ParamCount
	case ir.ParamCount:
	default:
		return bad("param_count %d differs from the blueprint's %d", m.ParamCount, ir.ParamCount)
	}
	for _, f := range []struct {
		name  string
		shape []int64
	}{{"input_shape", m.InputShape}, {"output_shape", m.OutputShape}} {
		if len(f.shape) == 0 || len(f.shape) > maxRank {
			return bad("%s must have 1 to %d dims, got %v", f.name, maxRank, f.shape)
		}
		for _, d := range f.shape {
			if d == 0 || d < -1 {
				return bad("%s %v: each dim must be >= 1 or -1 (any)", f.name, f.shape)
			}
		}
	}
	if !slices.Contains(dtypes, m.Dtype) {
		return bad("dtype %q is not one of %s", m.Dtype, strings.Join(dtypes, ", "))
	}
	if !validLabel(m.Device, maxDeviceLen) {
		return bad("device %q must be 1 to %d characters of [a-z0-9_:.-]", m.Device, maxDeviceLen)
	}
	for _, f := range []struct {
		name string
		raw  *json.RawMessage
	}{{"validation", &m.Validation}, {"lineage", &m.Lineage}} {
		if isNull(*f.raw) {
			*f.raw = nil
			continue
		}
		if b := bytes.TrimSpace(*f.raw); b[0] != '{' {
			return bad("%s must be a JSON object", f.name)
		}
	}
	if len(m.Tags) > maxTags {
		return bad("%d tags, limit %d", len(m.Tags), maxTags)
	}
	for _, t := range m.Tags {
		if !validTag(t) {
			return bad("tag %q must be 1 to %d printable characters", t, maxTagLen)
		}
	}
	slices.Sort(m.Tags)
	m.Tags = slices.Compact(m.Tags)
	if len(m.Tags) == 0 {
		m.Tags = nil
	}
	if m.WeightsSHA256 != "" && !canon.IsID(m.WeightsSHA256) {
		return bad("weights_sha256 %q is not 64 lowercase hex digits", m.WeightsSHA256)
	}
	if m.WeightsSize < 0 {
		return bad("weights_size %d is negative", m.WeightsSize)
	}
	return nil
}

// canonical returns the manifest's canonical bytes and id.
func (m *Manifest) canonical() ([]byte, string, error) {
	b, err := canon.Marshal(m)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	return b, canon.ID(b), nil
}

// template returns the blueprint's template name ("" when it has none).
func (m *Manifest) template() string {
	var t struct {
		Template string `json:"template"`
	}
	_ = json.Unmarshal(m.Blueprint, &t)
	return t.Template
}

func isNull(raw json.RawMessage) bool {
	b := bytes.TrimSpace(raw)
	return len(b) == 0 || string(b) == "null"
}

func validLabel(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && !strings.ContainsRune("_:.-", rune(c)) {
			return false
		}
	}
	return true
}

func validTag(s string) bool {
	if s == "" || len(s) > maxTagLen {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// readManifest decodes a stored manifest whose bytes already matched their
// id. It is lenient about unknown fields, so a store written by a newer
// version stays readable; it needs only the weights fields.
func readManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := canon.DecodeLenient(b, &m); err != nil {
		return nil, fmt.Errorf("manifest does not decode: %v", err)
	}
	if !canon.IsID(m.WeightsSHA256) || m.WeightsSize < 0 {
		return nil, fmt.Errorf("manifest has no valid weights_sha256 / weights_size")
	}
	return &m, nil
}
