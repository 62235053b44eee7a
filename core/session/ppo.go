package session

import (
	"fmt"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/policy/graphpolicy"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// PPOMovesPerEpoch bounds the moves the ppo policy makes at one end of
// epoch (the trainer's moves_per_epoch): it moves until it chooses wait, a
// move is refused, or this many moves were made.
const PPOMovesPerEpoch = 3

// ppoPolicy is a ppo session's graph policy: the network's decider and the
// graph its decisions are built in, both kept from one decision to the next
// so that a decision allocates no memory per node (the graph's nodes,
// edges, masks and encoding, the network's activations).
type ppoPolicy struct {
	dec   *graphpolicy.Decider
	graph Graph
	buf   graphBuffers
}

// ppoMovesLocked runs the ppo policy at an end of epoch: it builds the
// layer graph, takes the network's masked argmax move (graphpolicy.Decide)
// and applies it as a decision of the policy, through the same gates and
// governor as every decision (a refused move is not executed and counts in
// Counters.Refused), until the policy waits, a move is refused, or
// PPOMovesPerEpoch moves were made. It appends the decisions to out.
func (s *Session) ppoMovesLocked(out []DecisionResult) []DecisionResult {
	for range PPOMovesPerEpoch {
		d, done := s.ppoDecisionLocked()
		r := s.applyLocked(d)
		out = append(out, r)
		if done || !r.Applied {
			break
		}
	}
	return out
}

// ppoDecisionLocked returns the ppo policy's next decision, and whether it
// is its last of the epoch (a wait, or no move could be made).
func (s *Session) ppoDecisionLocked() (tamiyo.Decision, bool) {
	wait := func(format string, args ...any) (tamiyo.Decision, bool) {
		return tamiyo.Decision{Op: tamiyo.Wait, Layer: -1, Slot: -1, Reason: "ppo: " + fmt.Sprintf(format, args...)}, true
	}
	p := s.ppo
	if err := s.fillGraphLocked(&p.graph, &p.buf, true); err != nil {
		return wait("no graph: %v", err)
	}
	a, err := p.dec.Decide(&p.graph)
	if err != nil {
		return wait("no decision: %v", err)
	}
	rt := p.dec.Model().Runtime()
	reason := fmt.Sprintf("ppo: %s (the graph policy's most likely legal move, on %s; value estimate %.4g)", a, rt, a.Value)
	value := a.Value
	d := tamiyo.Decision{Layer: a.Layer, Slot: a.Slot, Reason: reason, ValueEstimate: &value}
	switch a.Op {
	case tamiyo.MoveWait:
		w, done := wait("wait (the graph policy's most likely legal move, on %s; value estimate %.4g)", rt, a.Value)
		w.ValueEstimate = &value
		return w, done
	case tamiyo.MovePrune:
		d.Op = tamiyo.Prune
	case tamiyo.MoveFossilize:
		d.Op = tamiyo.Fossilize
	case tamiyo.MoveAdvance:
		d.Op = tamiyo.Advance
	case tamiyo.MoveGerminate:
		d.Op, d.Template = tamiyo.Germinate, a.Template
		// A germination the template cannot make leaves Blueprint nil: the
		// session refuses it (and counts it) like any illegal decision.
		if t, err := blueprint.Lookup(a.Template); err != nil {
			d.Reason += fmt.Sprintf("; %v", err)
		} else if host, err := s.hostLocked(a.Layer); err != nil {
			d.Reason += fmt.Sprintf("; %v", err)
		} else if ir, err := tamiyo.Sized(t, host, a.Size); err != nil {
			d.Reason += fmt.Sprintf("; %v", err)
		} else {
			d.Blueprint, d.Params, d.ParamCount = ir, ir.Params, ir.ParamCount
		}
	default:
		return wait("the graph policy chose op %q, which is not a move: %v", a.Op, graphpolicy.ErrGraph)
	}
	return d, false
}
