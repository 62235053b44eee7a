package urza

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/esper-morph/esper/blueprint/canon"
)

// tmpPrefix starts the name of every file being written.
const tmpPrefix = ".tmp-"

// ioErr marks an operating-system error with ErrIO, keeping it in the
// chain (so recovery.Classify still sees its errno). Errors that already
// carry a code are returned as they are.
func ioErr(err error) error {
	if err == nil {
		return nil
	}
	var pe *fs.PathError
	var le *os.LinkError
	var errno syscall.Errno
	if errors.As(err, &pe) || errors.As(err, &le) || errors.As(err, &errno) {
		return fmt.Errorf("%w: %w", ErrIO, err)
	}
	return err
}

// writeAtomic writes data to dir/name through a temp file in dir: write,
// fsync, rename, fsync dir. The temp file is named
// tmpPrefix+name+"-<random>" and removed on failure. A reader never sees a
// partial file.
func writeAtomic(dir, name string, data []byte, mode fs.FileMode) (err error) {
	f, err := os.CreateTemp(dir, tmpPrefix+name+"-*")
	if err != nil {
		return ioErr(err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return ioErr(err)
	}
	if _, err = f.Write(data); err != nil {
		return ioErr(err)
	}
	if err = f.Sync(); err != nil {
		return ioErr(err)
	}
	if err = f.Close(); err != nil {
		return ioErr(err)
	}
	if err = os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return ioErr(err)
	}
	return syncDir(dir)
}

// syncDir fsyncs a directory so renames and removals in it are durable.
// File systems that cannot sync directories (EINVAL) are accepted.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return ioErr(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOTSUP) {
		return ioErr(err)
	}
	return nil
}

// readLimited reads path, refusing files over limit bytes: it returns the
// bytes and the size the file had when opened.
func readLimited(path string, limit int64) ([]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	if st.Size() > limit {
		return nil, st.Size(), nil
	}
	b := make([]byte, st.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, st.Size(), fmt.Errorf("%s shrank while being read: %w", path, err)
		}
		return nil, st.Size(), err
	}
	return b, st.Size(), nil
}

// objectName splits a file name in an objects dir into its id and
// extension (".json" or ".safetensors"); ok is false for other names.
func objectName(name string) (id, ext string, ok bool) {
	for _, e := range []string{manifestExt, weightsExt} {
		if strings.HasSuffix(name, e) {
			id = strings.TrimSuffix(name, e)
			return id, e, canon.IsID(id)
		}
	}
	return "", "", false
}

// tempID returns the id a temp file is being written for, if its name says.
func tempID(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, tmpPrefix)
	if !ok || len(rest) < 64 || !canon.IsID(rest[:64]) {
		return "", false
	}
	return rest[:64], true
}
