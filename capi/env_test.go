package main

import (
	"os"
	"strings"
	"testing"
)

// TestSyncEnv mirrors the caller's AWS_*/ESPER_* variables into Go's copy
// of the environment and leaves every other variable alone.
func TestSyncEnv(t *testing.T) {
	t.Setenv("ESPER_URZA_URL", "s3://old/prefix")
	t.Setenv("AWS_SESSION_TOKEN", "stale")
	t.Setenv("ESPER_TEST_DROPPED", "")
	t.Setenv("HOME_FOR_TEST", "kept")
	cases := []struct {
		name    string
		env     map[string]string
		want    map[string]string // "" with ok false: unset
		unset   []string
		wantErr string
	}{
		{"set, replace and unset", map[string]string{"ESPER_URZA_URL": "s3://new/p", "AWS_ACCESS_KEY_ID": "k"},
			map[string]string{"ESPER_URZA_URL": "s3://new/p", "AWS_ACCESS_KEY_ID": "k", "HOME_FOR_TEST": "kept"},
			[]string{"AWS_SESSION_TOKEN", "ESPER_TEST_DROPPED"}, ""},
		{"another family refused", map[string]string{"PATH": "/x"}, nil, nil, "not an AWS_* or ESPER_* variable"},
		{"NUL refused", map[string]string{"AWS_REGION": "a\x00b"}, nil, nil, "contains NUL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := syncEnv(tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if got, ok := os.LookupEnv(k); !ok || got != v {
					t.Errorf("%s = %q (set %v), want %q", k, got, ok, v)
				}
			}
			for _, k := range tc.unset {
				if _, ok := os.LookupEnv(k); ok {
					t.Errorf("%s is still set", k)
				}
			}
		})
	}
}
