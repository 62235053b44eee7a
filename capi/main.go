// Command capi is the C ABI of Esper, built with -buildmode=c-shared into
// libesper.so. It only translates: every export checks its arguments, looks
// up its handle, calls the Go API of core/, policy/ or blueprint/, and maps
// the error to a stable code from core/errcode. No logic lives here.
//
// The contract is the hand-written header capi/esper.h; the header cgo
// generates is a build output and is not documentation. See capi/README.md
// for the conventions every export follows.
package main

func main() {}
