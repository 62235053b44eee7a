//go:build !unix

package urza

// lockFile is a no-op where flock is unavailable: index rewrites are then
// serialised within one process only (Store.indexMu), so a root must not be
// shared by several processes there.
func lockFile(string) (func(), error) { return func() {}, nil }
