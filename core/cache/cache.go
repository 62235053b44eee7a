package cache

import (
	"fmt"
	"math"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Entry is one cached artifact.
type Entry struct {
	// Meta describes it.
	Meta Meta
	// Data is the artifact's bytes (may be nil when the cache only tracks an
	// object kept elsewhere, sized by Meta.Size).
	Data []byte
}

// Stats are the cache's counters.
type Stats struct {
	// Hits counts Gets that found a compatible entry.
	Hits uint64 `json:"hits"`
	// Misses counts Gets that found no entry.
	Misses uint64 `json:"misses"`
	// CompatMisses counts Gets that found an entry that did not fit.
	CompatMisses uint64 `json:"compat_misses"`
	// Evictions counts entries removed to make room.
	Evictions uint64 `json:"evictions"`
	// Rejected counts Puts refused because the entry exceeds MaxBytes.
	Rejected uint64 `json:"rejected"`
	// Bytes is the total size of the entries.
	Bytes int64 `json:"bytes"`
	// Entries is the number of entries.
	Entries int `json:"entries"`
	// MaxBytes is the bound on Bytes.
	MaxBytes int64 `json:"max_bytes"`
}

// Cache is a byte-bounded LRU of artifacts. Create it with New.
type Cache struct {
	maxBytes int64

	hits, misses, compat, evictions, rejected atomic.Uint64

	// mu guards lru and bytes.
	mu    sync.Mutex
	lru   *simplelru.LRU[string, *Entry]
	bytes int64
}

// New returns an empty cache holding at most maxBytes bytes (> 0).
func New(maxBytes int64) (*Cache, error) {
	if maxBytes <= 0 {
		return nil, fmt.Errorf("%w: max bytes %d must be > 0", ErrInvalid, maxBytes)
	}
	// The LRU's own count bound is never reached: bytes bound the cache.
	lru, err := simplelru.NewLRU[string, *Entry](math.MaxInt, nil)
	if err != nil {
		return nil, fmt.Errorf("cache: new: %w", err)
	}
	return &Cache{maxBytes: maxBytes, lru: lru}, nil
}

// Put stores data under meta.ID, replacing any entry with that id, and
// returns the ids evicted to make room (least recently used first). When
// data is non-nil, meta.Size must be 0 or len(data) and is set to
// len(data). An entry larger than the cache is refused with ErrTooLarge and
// the cache is left unchanged. Put keeps data: do not modify it afterwards.
func (c *Cache) Put(meta Meta, data []byte) (evicted []string, err error) {
	if data != nil {
		if meta.Size != 0 && meta.Size != int64(len(data)) {
			return nil, fmt.Errorf("%w: %s: size %d does not match %d bytes of data", ErrInvalid, meta.ID, meta.Size, len(data))
		}
		meta.Size = int64(len(data))
	}
	if err := meta.validate(); err != nil {
		return nil, fmt.Errorf("cache: put: %w", err)
	}
	if meta.Size > c.maxBytes {
		c.rejected.Add(1)
		return nil, fmt.Errorf("%w: %s is %d bytes, the cache holds at most %d", ErrTooLarge, meta.ID, meta.Size, c.maxBytes)
	}
	e := &Entry{Meta: meta.clone(), Data: data}

	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.lru.Peek(meta.ID); ok {
		c.bytes -= old.Meta.Size
	}
	c.lru.Add(meta.ID, e)
	c.bytes += e.Meta.Size
	for c.bytes > c.maxBytes {
		id, old, ok := c.lru.RemoveOldest()
		if !ok {
			break
		}
		c.bytes -= old.Meta.Size
		c.evictions.Add(1)
		evicted = append(evicted, id)
	}
	return evicted, nil
}

// Get returns the entry for id if it fits want, and marks it recently
// used. It returns an error wrapping ErrMiss when there is no such entry,
// and one wrapping ErrIncompatible, saying why, when there is one that does
// not fit. The returned Entry shares its slices with the cache: treat them
// as read-only.
func (c *Cache) Get(id string, want Want) (Entry, error) {
	c.mu.Lock()
	e, ok := c.lru.Peek(id)
	var why string
	if ok {
		if why = e.Meta.fits(&want); why == "" {
			c.lru.Get(id)
		}
	}
	c.mu.Unlock()
	switch {
	case !ok:
		c.misses.Add(1)
		return Entry{}, fmt.Errorf("%w: %s", ErrMiss, id)
	case why != "":
		c.compat.Add(1)
		return Entry{}, fmt.Errorf("%w: %s: %s", ErrIncompatible, id, why)
	}
	c.hits.Add(1)
	return *e, nil
}

// Peek returns the metadata of id without counting a hit or changing its
// recency.
func (c *Cache) Peek(id string) (Meta, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Peek(id)
	if !ok {
		return Meta{}, false
	}
	return e.Meta, true
}

// Remove drops id and reports whether it was present. It is not an
// eviction.
func (c *Cache) Remove(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.lru.Peek(id)
	if !ok {
		return false
	}
	c.lru.Remove(id)
	c.bytes -= e.Meta.Size
	return true
}

// Purge drops every entry (not counted as evictions).
func (c *Cache) Purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Purge()
	c.bytes = 0
}

// Keys returns the ids from least to most recently used.
func (c *Cache) Keys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Keys()
}

// Len returns the number of entries.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	bytes, n := c.bytes, c.lru.Len()
	c.mu.Unlock()
	return Stats{
		Hits:         c.hits.Load(),
		Misses:       c.misses.Load(),
		CompatMisses: c.compat.Load(),
		Evictions:    c.evictions.Load(),
		Rejected:     c.rejected.Load(),
		Bytes:        bytes,
		Entries:      n,
		MaxBytes:     c.maxBytes,
	}
}
