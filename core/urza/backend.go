package urza

import (
	"context"
	"errors"
	"io"
	"time"
)

// backend is where a Store keeps its bytes: a local directory
// (dirBackend) or an S3-compatible bucket (s3Backend). The store's contract
// (content addressing, verification on every read, weights before
// manifest, the index, outcome records) is written once, in terms of these
// operations; a backend only moves bytes.
//
// Keys are slash-separated paths relative to the store's root, such as
// "objects/ab/<id>.json" or "index.json". A missing object is an error
// wrapping fs.ErrNotExist. Errors name the backend's location.
type backend interface {
	// location names the store: an absolute directory or an s3:// URL.
	location() string
	// read returns key's bytes and metadata. When the object is larger
	// than limit it returns nil bytes and the metadata (nothing is read).
	read(ctx context.Context, key string, limit int64) ([]byte, object, error)
	// open returns a reader of key's bytes and its metadata, for reading
	// an object without holding it whole; the caller closes it.
	open(ctx context.Context, key string) (io.ReadCloser, object, error)
	// write stores data under key atomically: a reader sees the previous
	// object or the new one, never a part.
	write(ctx context.Context, key string, data []byte) error
	// writeIf writes key only if it still has the tag prev ("" meaning:
	// only if it does not exist), else it returns errChanged. It returns
	// the tag of the object written. A backend whose lockIndex already
	// serialises writers may ignore prev.
	writeIf(ctx context.Context, key string, data []byte, prev string) (string, error)
	// stat returns key's metadata.
	stat(ctx context.Context, key string) (object, error)
	// remove deletes key (fs.ErrNotExist when it is missing).
	remove(ctx context.Context, key string) error
	// list returns the objects whose keys start with prefix ("" or ending
	// in "/"), sorted by key. Unless recursive, it returns only the
	// objects directly under prefix and, as Dir objects, the folders there.
	list(ctx context.Context, prefix string, recursive bool) ([]object, error)
	// lockIndex serialises index rewrites between processes where the
	// backend can (a file lock); it returns the release function.
	lockIndex() (func(), error)
}

// object is the metadata of one stored object.
type object struct {
	// Key is the object's key; a Dir object's ends in "/".
	Key string
	// Size is the object's length in bytes.
	Size int64
	// ModTime is when the object was last written.
	ModTime time.Time
	// Tag changes whenever the object is rewritten (an S3 ETag; for a file,
	// its size and modification time).
	Tag string
	// Dir marks a folder in a non-recursive listing.
	Dir bool
}

// errChanged is writeIf's answer when the object changed since it was
// read: the caller reads it again and retries.
var errChanged = errors.New("object changed since it was read")
