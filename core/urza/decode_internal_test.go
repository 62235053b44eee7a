package urza

import (
	"strings"
	"testing"
)

// TestReadManifestSyntax: a stored manifest is read leniently (unknown
// fields from another version are ignored) but with the one JSON syntax of
// the project: a duplicate key is refused.
func TestReadManifestSyntax(t *testing.T) {
	sha := strings.Repeat("a", 64)
	cases := []struct {
		name, doc, err string
	}{
		{"plain", `{"weights_sha256": "` + sha + `", "weights_size": 4}`, ""},
		{"unknown field", `{"weights_sha256": "` + sha + `", "weights_size": 4, "from_the_future": 1}`, ""},
		{"duplicate key", `{"weights_sha256": "` + sha + `", "weights_size": 4, "weights_size": 8}`, `duplicate object key "weights_size"`},
		{"trailing", `{"weights_sha256": "` + sha + `", "weights_size": 4} {}`, "trailing data"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := readManifest([]byte(tc.doc))
			switch {
			case tc.err == "" && (err != nil || m.WeightsSize != 4):
				t.Fatalf("readManifest: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
		})
	}
}
