// Package lifecycle is the seed state machine of Kasmina: the seed states
// and their stable integer values, the table of legal transitions (the single
// source of truth; nothing else decides what may follow what), the per-seed
// record with its history, the gates that may hold a transition back and say
// why, and the alpha schedules that blend a seed into its host.
//
// Everything here is deterministic and free of I/O. The State and Schedule
// values, the transition table and the gate and schedule functions are
// immutable or pure and safe for concurrent use. A *Seed is a plain record:
// it is not safe for concurrent use, and its owner (core/session) guards it
// with its own mutex.
package lifecycle
