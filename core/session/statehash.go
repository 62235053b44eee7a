package session

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// StateHash is a digest of a session's state, made to be compared between
// the ranks of a data-parallel run: every rank's session must hold the same
// state at the same point of the run. SHA256 covers every part; Parts lets
// the caller name the first part on which two ranks differ.
type StateHash struct {
	// SHA256 is the hex SHA-256 of the parts' digests, in order.
	SHA256 string `json:"sha256"`
	// Parts are the digests of the state's parts, in a fixed order.
	Parts []HashPart `json:"parts"`
}

// HashPart is the digest of one part of the state, with a short summary of
// it in words for error messages.
type HashPart struct {
	// Name names the part: "step", "epoch", "config", "seed <layer>/<slot>",
	// "signals", "controller", "counters", "pending events", "growth log".
	Name string `json:"name"`
	// SHA256 is the hex SHA-256 of the part's canonical JSON.
	SHA256 string `json:"sha256"`
	// Summary says what the part holds, in a few words.
	Summary string `json:"summary"`
}

// StateHash digests the state a snapshot would save, except the session's
// own log settings (each rank may log to its own file). Two sessions with
// equal hashes continue identically from the same inputs.
func (s *Session) StateHash() (StateHash, error) {
	if err := s.lock(); err != nil {
		return StateHash{}, err
	}
	defer s.unlock()
	ctl, err := s.ctl.State()
	if err != nil {
		return StateHash{}, fmt.Errorf("session: state hash: %w", err)
	}
	cfg := s.set.cfg
	// Settings of this process, not of the run: where it logs, which store
	// it reads and which rank it labels its metrics with differ by rank.
	cfg.LogPath, cfg.LogSignalsEvery = "", 0
	cfg.Urza, cfg.Metrics = "", MetricsConfig{}
	type part struct {
		name, summary string
		value         any
	}
	parts := []part{
		{"step", fmt.Sprintf("step %d", s.step), s.step},
		{"epoch", fmt.Sprintf("epoch %d", s.epoch), s.epoch},
		{"config", fmt.Sprintf("policy %s, %d layers, %d slots each", cfg.Policy, len(s.set.names), s.slots), cfg},
	}
	for i, seed := range s.seeds {
		name := fmt.Sprintf("seed %s/%d", s.set.names[seed.Layer], seed.Slot)
		id := seed.BlueprintID
		if len(id) > 12 {
			id = id[:12]
		}
		summary := fmt.Sprintf("%s, generation %d, %d steps in state, alpha %.6g, blueprint %q, %d failures",
			seed.State, seed.Generation, seed.StepsInState, seed.Alpha, id, seed.Failures)
		parts = append(parts, part{name, summary, struct {
			Seed          any `json:"seed"`
			EpochsInState int `json:"epochs_in_state"`
		}{seed, s.epochsIn[i]}})
	}
	// A restored session holds empty lists where a fresh one holds none:
	// the same state, hashed the same.
	pending, growth := s.pending, s.growth
	if pending == nil {
		pending = []Event{}
	}
	if growth == nil {
		growth = []LogEntry{}
	}
	parts = append(parts,
		part{"signals", "the health signals' rolling statistics", s.stats.State()},
		part{"controller", fmt.Sprintf("%d validation losses remembered, %d alarms", len(ctl.ValHistory),
			ctl.Governor.Alarms), ctl},
		part{"counters", fmt.Sprintf("%+v", s.counters), s.counters},
		part{"rollout", s.rolloutSummaryLocked(), s.rolloutStatesLocked()},
		part{"pending events", fmt.Sprintf("%d events", len(pending)), pending},
		part{"growth log", fmt.Sprintf("%d entries, %d dropped", len(s.growth), s.dropped), struct {
			Entries []LogEntry `json:"entries"`
			Dropped int64      `json:"dropped"`
		}{growth, s.dropped}},
	)
	out := StateHash{Parts: make([]HashPart, 0, len(parts))}
	all := sha256.New()
	for _, p := range parts {
		b, err := json.Marshal(p.value)
		if err != nil {
			return StateHash{}, fmt.Errorf("session: state hash: %s: %w", p.name, err)
		}
		sum := sha256.Sum256(b)
		all.Write(sum[:])
		out.Parts = append(out.Parts, HashPart{Name: p.name, SHA256: hex.EncodeToString(sum[:]), Summary: p.summary})
	}
	out.SHA256 = hex.EncodeToString(all.Sum(nil))
	return out, nil
}
