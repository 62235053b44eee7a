// Package tests_go holds cross-package tests of the Go core: the C ABI contract
// (header against exports, exported symbols), and end-to-end checks that span
// several packages.
package tests_go
