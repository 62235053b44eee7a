package urza

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// dirBackend keeps a store in a local directory: every write goes to a
// temp file in its final directory, is fsynced, renamed into place and the
// directory fsynced; index rewrites take an exclusive flock on index.lock.
type dirBackend struct {
	root string
	mode fs.FileMode
}

func (b *dirBackend) location() string { return b.root }

func (b *dirBackend) path(key string) string {
	return filepath.Join(b.root, filepath.FromSlash(key))
}

func (b *dirBackend) read(_ context.Context, key string, limit int64) ([]byte, object, error) {
	p := b.path(key)
	data, size, err := readLimited(p, limit)
	if err != nil {
		return nil, object{}, ioErr(err)
	}
	obj := object{Key: key, Size: size}
	if st, err := os.Stat(p); err == nil {
		obj = fileObject(key, st)
	}
	return data, obj, nil
}

func (b *dirBackend) open(_ context.Context, key string) (io.ReadCloser, object, error) {
	f, err := os.Open(b.path(key))
	if err != nil {
		return nil, object{}, ioErr(err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, object{}, ioErr(err)
	}
	return f, fileObject(key, st), nil
}

func (b *dirBackend) write(_ context.Context, key string, data []byte) error {
	dir := filepath.Dir(b.path(key))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return ioErr(err)
	}
	return writeAtomic(dir, path.Base(key), data, b.mode)
}

// writeIf ignores prev: index rewrites already hold the flock of lockIndex.
func (b *dirBackend) writeIf(ctx context.Context, key string, data []byte, _ string) (string, error) {
	if err := b.write(ctx, key, data); err != nil {
		return "", err
	}
	st, err := b.stat(ctx, key)
	return st.Tag, err
}

func (b *dirBackend) stat(_ context.Context, key string) (object, error) {
	st, err := os.Stat(b.path(key))
	if err != nil {
		return object{}, ioErr(err)
	}
	return fileObject(key, st), nil
}

func (b *dirBackend) remove(_ context.Context, key string) error {
	p := b.path(key)
	if err := os.Remove(p); err != nil {
		return ioErr(err)
	}
	return syncDir(filepath.Dir(p))
}

func (b *dirBackend) list(ctx context.Context, prefix string, recursive bool) ([]object, error) {
	top := b.path(prefix)
	var out []object
	if !recursive {
		entries, err := os.ReadDir(top)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, ioErr(err)
		}
		for _, e := range entries {
			key := prefix + e.Name()
			if e.IsDir() {
				out = append(out, object{Key: key + "/", Dir: true})
				continue
			}
			if !e.Type().IsRegular() {
				continue
			}
			if st, err := e.Info(); err == nil {
				out = append(out, fileObject(key, st))
			}
		}
		return out, nil
	}
	err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // vanished meanwhile
			}
			return ioErr(err)
		}
		if d.IsDir() {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("%w: %w", ErrCancelled, err)
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		st, err := d.Info()
		if err != nil {
			return nil // removed between the listing and now
		}
		rel, err := filepath.Rel(b.root, p)
		if err != nil {
			return err
		}
		out = append(out, fileObject(filepath.ToSlash(rel), st))
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

func (b *dirBackend) lockIndex() (func(), error) {
	return lockFile(filepath.Join(b.root, lockName))
}

// fileObject describes a file; its tag is its size and modification time
// (a rewrite renames a new file into place, with a new mtime).
func fileObject(key string, st fs.FileInfo) object {
	tag := fmt.Sprintf("%d-%d", st.Size(), st.ModTime().UnixNano())
	return object{Key: strings.TrimPrefix(key, "./"), Size: st.Size(), ModTime: st.ModTime(), Tag: tag}
}
