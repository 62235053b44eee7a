// Package cache is Esper's kernel cache: an LRU of verified artifacts,
// bounded in bytes, built on the single-threaded core of
// hashicorp/golang-lru/v2 (simplelru) behind one mutex.
//
// Entries are keyed by artifact id and carry metadata (input and output
// shape, dtype, device, size, tags). Get takes what the caller needs (Want)
// and counts a hit only when the entry is compatible with it; an entry that
// exists but does not fit is a compatibility miss, reported separately from
// plain misses. Put evicts least recently used entries until the total size
// is under the bound, and refuses an entry larger than the bound.
//
// Concurrency: every method is safe for concurrent use. Counters are
// atomics; the LRU and the byte total sit under one mutex, and no caller
// code runs while it is held.
//
// Ownership: Put keeps the data slice it is given and Get returns that same
// slice, without copying, so a hit costs no allocation. Neither the caller
// nor any reader may modify it after Put. Metadata slices are copied on Put;
// Get returns a copy of the metadata struct whose slices are shared and
// must not be modified either.
package cache
