package urza_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/urza"
)

// killRootEnv tells a re-executed test binary to act as the writer that
// TestKilledWriterLeavesStoreConsistent kills.
const killRootEnv = "ESPER_URZA_TEST_KILL_ROOT"

// TestKillHelper is the child process: it writes large artifacts into the
// store named by killRootEnv until it is killed. It does nothing in a normal
// test run.
func TestKillHelper(t *testing.T) {
	root := os.Getenv(killRootEnv)
	if root == "" {
		t.Skip("helper process for TestKilledWriterLeavesStoreConsistent")
	}
	s, err := urza.Open(root, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	// One 4 MB weights file, made unique per artifact by its last 8 bytes,
	// so the loop spends its time hashing and writing.
	w := safetensors(1<<20, uint64(os.Getpid()))
	for i := 0; ; i++ {
		binary.LittleEndian.PutUint64(w[len(w)-8:], uint64(i))
		if _, err := s.Put(manifest(t, 1+i%8, []string{"kill"}, nil), w); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
	}
}

func countManifests(t *testing.T, root string) int {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(root, "objects", "*", "*.json"))
	return len(matches)
}

// TestKilledWriterLeavesStoreConsistent SIGKILLs a process in the middle of
// writing 4 MB artifacts in a loop, several times, and checks that the store
// shows only complete artifacts: every listed one loads and verifies, Verify
// finds nothing worse than leftovers, and GC clears those.
func TestKilledWriterLeavesStoreConsistent(t *testing.T) {
	if os.Getenv(killRootEnv) != "" {
		t.Skip("inside the helper")
	}
	rounds := 4
	if testing.Short() {
		rounds = 1
	}
	root := t.TempDir()
	for r := 0; r < rounds; r++ {
		before := countManifests(t, root)
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillHelper$")
		cmd.Env = append(os.Environ(), killRootEnv+"="+root)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(60 * time.Second)
		for countManifests(t, root) < before+2+r {
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("writer made no progress: %s", stderr.String())
			}
			time.Sleep(2 * time.Millisecond)
		}
		// Land the kill at varying points of a write.
		time.Sleep(time.Duration(r*7%20) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		err := cmd.Wait()
		if ee, ok := err.(*exec.ExitError); !ok || ee.Exited() {
			t.Fatalf("writer was not killed by the signal: %v: %s", err, stderr.String())
		}
	}

	s := openStore(t, root, nil)
	rep, err := s.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Bad) != 0 {
		t.Fatalf("killed writer left bad objects: %+v", rep.Bad)
	}
	for _, p := range rep.Leftovers {
		if p.Kind != urza.KindTemp && p.Kind != urza.KindOrphan {
			t.Fatalf("killed writer left %+v", p)
		}
	}
	t.Logf("leftovers after %d kills: %d", rounds, len(rep.Leftovers))
	if rep.OK != rep.Checked || rep.OK < rounds*2 {
		t.Fatalf("verify: %+v", rep)
	}
	list, err := s.List(urza.Query{Tags: []string{"kill"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != rep.OK {
		t.Fatalf("index lists %d artifacts, %d are stored", len(list), rep.OK)
	}
	for _, in := range list {
		if _, err := s.Get(in.ID); err != nil {
			t.Fatalf("listed artifact does not load: %v", err)
		}
	}
	gcStore := openStore(t, root, &urza.Options{TempGrace: -1})
	if _, err := gcStore.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	rep, err = gcStore.Verify(context.Background())
	if err != nil || len(rep.Bad)+len(rep.Leftovers) != 0 || rep.OK != len(list) {
		t.Fatalf("after GC: %+v, %v", rep, err)
	}
	t.Logf("%d kills, %d complete artifacts", rounds, rep.OK)
}
