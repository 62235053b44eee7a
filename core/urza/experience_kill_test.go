package urza_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/urza"
)

// killExperienceEnv tells a re-executed test binary to act as the writer
// that TestKilledExperienceWriterLeavesWholeRecords kills.
const killExperienceEnv = "ESPER_URZA_TEST_KILL_EXPERIENCE"

// bigSteps is a policy episode's steps with graphs of about 2 MB in all, so
// that a write takes long enough for a kill to land inside it.
func bigSteps() []any {
	pad := strings.Repeat("x", 1<<16)
	var steps []any
	for i := 0; i < 32; i++ {
		steps = append(steps, map[string]any{"graph": map[string]any{"pad": pad, "i": i},
			"action": map[string]any{"op": 0, "target": -1, "template": -1, "size": -1}, "log_prob": -0.5, "value": 0.1, "applied": true})
	}
	return steps
}

// TestKillExperienceHelper is the child process: it writes episodes into
// the store named by killExperienceEnv, replacing them in turn, until it is
// killed. It does nothing in a normal test run.
func TestKillExperienceHelper(t *testing.T) {
	root := os.Getenv(killExperienceEnv)
	if root == "" {
		t.Skip("helper process for TestKilledExperienceWriterLeavesWholeRecords")
	}
	s, err := urza.Open(root, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	steps := bigSteps()
	for i := 0; ; i++ {
		if _, err := s.PutExperience(experience(t, "ppo-kill", "policy", 1+i%5, map[string]any{"steps": steps})); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

// TestKilledExperienceWriterLeavesWholeRecords SIGKILLs a process writing
// (and rewriting) 2 MB experience records, several times, and checks that
// every record the store lists reads back whole and validates.
func TestKilledExperienceWriterLeavesWholeRecords(t *testing.T) {
	if os.Getenv(killExperienceEnv) != "" {
		t.Skip("inside the helper")
	}
	rounds := 3
	if testing.Short() {
		rounds = 1
	}
	root := t.TempDir()
	dir := filepath.Join(root, "experience", "ppo-kill")
	for r := 0; r < rounds; r++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillExperienceHelper$")
		cmd.Env = append(os.Environ(), killExperienceEnv+"="+root)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		for {
			m, _ := filepath.Glob(filepath.Join(dir, "policy-*.json"))
			if len(m) >= 2+r {
				break
			}
			if time.Since(start) > 60*time.Second {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("writer made no progress: %s", stderr.String())
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(r*7%20) * time.Millisecond) // land the kill at varying points
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err == nil {
			t.Fatalf("writer was not killed: %s", stderr.String())
		}
	}
	s := openStore(t, root, nil)
	recs, err := s.Experience("ppo-kill")
	if err != nil || len(recs) < 2 {
		t.Fatalf("after %d kills: %d records, %v", rounds, len(recs), err)
	}
	for i, b := range recs {
		if _, err := urza.ParseExperience(b); err != nil {
			t.Fatalf("record %d does not validate after the kills: %v", i, err)
		}
	}
	temps, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	t.Logf("%d kills: %d whole records, %d temp files left", rounds, len(recs), len(temps))
}
