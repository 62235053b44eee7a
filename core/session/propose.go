package session

import (
	"errors"
	"fmt"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// MaxProposalReason bounds the reason a proposal keeps (longer ones are
// cut).
const MaxProposalReason = MaxFailureMessage

// Proposal is a move proposed by a policy outside the session (a learned
// policy in Python): one of tamiyo.MoveOps on the slot layer/slot; a
// germination names a template and a size index of tamiyo.SizeScales.
type Proposal struct {
	Op       string `json:"op"`
	Layer    int    `json:"layer"`
	Slot     int    `json:"slot"`
	Template string `json:"template,omitempty"`
	Size     int    `json:"size,omitempty"`
	// Reason is recorded with the transition (default "proposed by an
	// external policy").
	Reason string `json:"reason,omitempty"`
}

// MaxProposalBytes bounds a proposal document.
const MaxProposalBytes = 1 << 16

// ParseProposal decodes a proposal document strictly (unknown fields and
// trailing data are errors with code INVALID).
func ParseProposal(data []byte) (Proposal, error) {
	var p Proposal
	if len(data) > MaxProposalBytes {
		return p, fmt.Errorf("session: proposal document is %d bytes, limit %d: %w", len(data), MaxProposalBytes, ErrArgument)
	}
	if err := decodeStrict(data, &p); err != nil {
		return Proposal{}, fmt.Errorf("session: proposal: %v: %w", err, ErrArgument)
	}
	return p, nil
}

// ProposalResult says what became of a proposal: Applied, or Refused with
// the gate or limit that refused it; Events are every pending event.
type ProposalResult struct {
	Proposal Proposal `json:"proposal"`
	Applied  bool     `json:"applied"`
	Refused  string   `json:"refused,omitempty"`
	Events   []Event  `json:"events"`
}

// Propose carries out a move proposed from outside through the session's
// own operations (Germinate, Prune, Fossilize, Advance), so every move
// passes the lifecycle's transition table and the governor's limits, the
// same rules Graph's masks show. A move they refuse is not executed: it is
// counted in Counters.Refused (every proposal in Counters.Proposals) and
// returned with the reason; the session is unchanged. Advance is legal for
// a proposal only from GERMINATED, TRAINING and BLENDING (see
// tamiyo.AdvanceLegal). Only a closed session is an error.
func (s *Session) Propose(p Proposal) (ProposalResult, error) {
	if len(p.Reason) > MaxProposalReason {
		p.Reason = p.Reason[:MaxProposalReason]
	}
	reason := p.Reason
	if reason == "" {
		reason = "proposed by an external policy"
	}
	evs, err := s.carryOut(p, reason)
	if errors.Is(err, ErrClosed) {
		return ProposalResult{}, err
	}
	if lerr := s.lock(); lerr != nil {
		return ProposalResult{}, lerr
	}
	s.counters.Proposals++
	res := ProposalResult{Proposal: p, Applied: err == nil, Events: evs}
	if err != nil {
		s.counters.Refused++
		res.Refused = err.Error()
		res.Events = s.drainLocked()
	}
	s.unlock()
	if res.Events == nil {
		res.Events = []Event{}
	}
	return res, nil
}

// carryOut runs p through the session's operations.
func (s *Session) carryOut(p Proposal, reason string) ([]Event, error) {
	switch p.Op {
	case tamiyo.MoveWait:
		return s.Events()
	case tamiyo.MoveGerminate:
		t, err := blueprint.Lookup(p.Template)
		if err != nil {
			return nil, fmt.Errorf("session: proposal: %w", err)
		}
		if err := s.lock(); err != nil {
			return nil, err
		}
		host, err := s.hostLocked(p.Layer)
		s.unlock()
		if err != nil {
			return nil, err
		}
		ir, err := tamiyo.Sized(t, host, p.Size)
		if err != nil {
			return nil, fmt.Errorf("session: proposal: %w", err)
		}
		return s.Germinate(p.Layer, p.Slot, ir, reason)
	case tamiyo.MovePrune:
		return s.Prune(p.Layer, p.Slot, reason)
	case tamiyo.MoveFossilize:
		return s.Fossilize(p.Layer, p.Slot, reason)
	case tamiyo.MoveAdvance:
		if err := s.lock(); err != nil {
			return nil, err
		}
		i, err := s.indexLocked(p.Layer, p.Slot)
		if err == nil && !tamiyo.AdvanceLegal(s.seeds[i].State) {
			err = fmt.Errorf("session: proposal: a policy may advance only a GERMINATED, TRAINING or BLENDING seed, %d/%d is %s: %w",
				p.Layer, p.Slot, s.seeds[i].State, ErrSeedState)
		}
		s.unlock()
		if err != nil {
			return nil, err
		}
		return s.Advance(p.Layer, p.Slot, reason)
	}
	return nil, fmt.Errorf("session: proposal: op %q is not one of %v: %w", p.Op, tamiyo.MoveOps(), ErrArgument)
}
