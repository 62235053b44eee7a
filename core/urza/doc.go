// Package urza is Esper's content-addressed artifact store on a local
// directory (docs/internals.md, "Artifacts").
//
// An artifact is a manifest (JSON) plus weights (safetensors bytes). The
// manifest records the weights' SHA-256 and size, and the artifact id is the
// SHA-256 of the manifest's canonical bytes, so one id covers both files.
// Every read re-hashes both and refuses a mismatch with ErrCorrupt; nothing
// is returned from a corrupt, truncated or forged artifact. Weights must be
// a well-formed safetensors file; nothing in an artifact is ever executed.
//
// Layout under the root:
//
//	objects/<id[:2]>/<id>.safetensors   weights
//	objects/<id[:2]>/<id>.json          canonical manifest
//	objects/<id[:2]>/.tmp-*             files being written
//	index.json                          query index, rebuilt from objects
//	index.lock                          serialises index rewrites (flock)
//
// Crash safety: every file is written to a temp file in its final
// directory, fsynced, renamed into place, and the directory fsynced. Weights
// are in place before the manifest, and an artifact exists exactly when its
// manifest does, so a process killed at any point leaves at worst temp files
// and unreferenced weights, never a visible partial artifact; GC removes the
// leftovers. The index is a cache of the objects: when it is missing,
// unreadable or disagrees with the objects, Open rebuilds it.
//
// Concurrency: a *Store is safe for use by many goroutines. Writes to one id
// are serialised in the process; several processes may share a root (index
// rewrites take an exclusive flock), though GC should not run while another
// process writes. Transient I/O errors are retried with backoff
// (core/recovery), and each artifact has a circuit breaker: after repeated
// failed loads its Gets fail fast with an Unavailable-coded error until the
// cool-down passes, a Put repairs it, or it is deleted.
//
// Ownership: byte slices passed to Put are only read during the call;
// slices returned by Get belong to the caller.
package urza
