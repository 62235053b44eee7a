//go:build esper_test

package main

/*
#include <stdint.h>
*/
import "C"

// Exports for tests only, built into the test variant of the library
// (go build -tags esper_test; make test-lib writes
// python/esper/_lib/test/libesper.so). The production library has none of
// them.

//export esper_test_panic
func esper_test_panic(inGoroutine C.int32_t) C.int {
	return call(0, func() error {
		if inGoroutine != 0 {
			return <-goSafe(func() error { panic("esper_test_panic: deliberate panic in a goroutine") })
		}
		panic("esper_test_panic: deliberate panic")
	})
}
