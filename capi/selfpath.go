package main

/*
#cgo CFLAGS: -D_GNU_SOURCE
#cgo LDFLAGS: -ldl
#include <dlfcn.h>

// self_path is the file this library was loaded from (NULL if unknown). It
// lives in a file without exports: cgo copies the preamble of files with
// exports into two C files, where a definition would be duplicated.
static const char *self_path(void) {
	Dl_info info;
	if (dladdr((void *)self_path, &info) && info.dli_fname) {
		return info.dli_fname;
	}
	return 0;
}
*/
import "C"

// selfPath is the path of the loaded libesper.so ("" when the loader does
// not say).
func selfPath() string {
	p := C.self_path()
	if p == nil {
		return ""
	}
	return C.GoString(p)
}
