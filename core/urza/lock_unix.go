//go:build unix

package urza

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive flock on path (created if needed), blocking
// until it is granted, and returns the function that releases it. The kernel
// releases it too when the process dies.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, ioErr(err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, ioErr(&os.PathError{Op: "flock", Path: path, Err: err})
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		_ = f.Close()
	}, nil
}
