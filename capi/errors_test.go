package main

import (
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/esper-morph/esper/core/errcode"
)

// TestErrorTableBounded: failing calls on 400k forged handles, and from
// thousands of threads, keep the table within its bounds; a live handle's
// message stays until the handle is freed.
func TestErrorTableBounded(t *testing.T) {
	runtime.LockOSThread() // one thread: its slot is the one forged handles share
	defer runtime.UnlockOSThread()
	tbl := newErrorTable()
	live := handles.add("live")
	defer handles.remove(live)
	tbl.set(live, errcode.Invalid, "live handle's error")
	for h := uint64(1 << 40); h < 1<<40+400_000; h++ {
		tbl.set(h, errcode.Handle, "handle is unknown or freed")
	}
	if nh, nt := tbl.size(); nh != 1 || nt != 1 {
		t.Fatalf("after 400k forged handles: %d handle slots, %d thread slots; want 1, 1", nh, nt)
	}
	// The forged handle's message is the calling thread's.
	if e := tbl.get(1<<40 + 5); e.code != errcode.Handle {
		t.Fatalf("forged handle's error %+v", e)
	}
	if e := tbl.get(live); e.msg != "live handle's error" {
		t.Fatalf("live handle's error %+v", e)
	}
	for id := uint64(0); id < 3*maxThreadErrors; id++ {
		tbl.setThread(id+1, lastError{code: errcode.Invalid, msg: "x"})
	}
	if _, nt := tbl.size(); nt != maxThreadErrors {
		t.Fatalf("%d thread slots, want %d", nt, maxThreadErrors)
	}
	tbl.drop(live)
	if nh, _ := tbl.size(); nh != 0 {
		t.Fatalf("%d handle slots after drop", nh)
	}
	tbl.set(0, errcode.Invalid, strings.Repeat("y", 10*maxErrorMessage))
	if e := tbl.get(0); len(e.msg) > maxErrorMessage+64 || !strings.HasSuffix(e.msg, "[... message cut]") {
		t.Fatalf("long message kept as %d bytes", len(e.msg))
	}
}

// TestErrorTableConcurrent: several goroutines setting and reading at once.
func TestErrorTableConcurrent(t *testing.T) {
	tbl := newErrorTable()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				tbl.set(uint64(g*1000+i+1), errcode.Handle, "x")
				tbl.get(uint64(i))
			}
		}(g)
	}
	wg.Wait()
	if nh, nt := tbl.size(); nh != 0 || nt > maxThreadErrors {
		t.Fatalf("%d handle slots, %d thread slots", nh, nt)
	}
}
