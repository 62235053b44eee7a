package graphpolicy

import (
	"fmt"
	"math"
	"slices"

	"github.com/esper-morph/esper/core/gnn"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// Action is the policy's move on a graph: the op, and for every op but wait
// the target slot; for a germination the template and the size index (of
// tamiyo.SizeScales). Value is the value head's estimate.
type Action struct {
	Op       string  `json:"op"`
	Layer    int     `json:"layer"`
	Slot     int     `json:"slot"`
	Template string  `json:"template,omitempty"`
	Size     int     `json:"size"`
	Value    float64 `json:"value"`
}

// String describes the action in words.
func (a Action) String() string {
	switch a.Op {
	case tamiyo.MoveWait:
		return "wait"
	case tamiyo.MoveGerminate:
		return fmt.Sprintf("germinate %s at size %g at %d/%d", a.Template, tamiyo.SizeScales()[a.Size], a.Layer, a.Slot)
	}
	return fmt.Sprintf("%s %d/%d", a.Op, a.Layer, a.Slot)
}

// Decide returns the policy's deterministic move on g (on g.Encoded when
// set, as the session's graphs carry it; else on Encode(g)): each head's most
// likely legal choice in turn (op; the op's target slot; for a germination
// the template at the target's layer, then the size), every head masked
// with g's legal moves (Graph.Masks) so an illegal choice is never taken.
// It allocates its buffers each call; a Decider keeps them.
func (m *Model) Decide(g *Graph) (Action, error) { return m.NewDecider().Decide(g) }

// Decider takes a Model's decisions with buffers it keeps from one call to
// the next (the encoding, the network's state): a session's policy object.
// Once warm on a graph of a given size its decisions allocate nothing. Not
// safe for concurrent use (the Model is).
type Decider struct {
	model *Model
	enc   Encoded
	st    gnn.State
	dense denseHeads // the ONNX runtime's outputs (Model.Runtime infer.ONNX)
}

// heads are the network's outputs a decision reads: gnn.State computes them
// on demand (the native runtime); denseHeads reads them in ONNX Runtime's
// outputs, computed for every layer, template and size at once.
type heads interface {
	Value() float64
	OpLogits() []float64
	TargetLogits() []float64
	TemplateLogits(layer int) []float64
	SizeLogits(layer, template int) []float64
}

// denseHeads reads the heads in a gnn.Dense of k templates and z sizes.
type denseHeads struct {
	d    gnn.Dense
	k, z int
}

// Value is the value head's estimate.
func (h *denseHeads) Value() float64 { return h.d.Value }

// OpLogits are the op head's logits.
func (h *denseHeads) OpLogits() []float64 { return h.d.Op }

// TargetLogits are the target head's logits (NumTargetOps x targets).
func (h *denseHeads) TargetLogits() []float64 { return h.d.Target }

// TemplateLogits are the template head's logits at layer node layer.
func (h *denseHeads) TemplateLogits(layer int) []float64 {
	return h.d.Template[layer*h.k : (layer+1)*h.k]
}

// SizeLogits are the size head's logits at layer node layer for template
// index template.
func (h *denseHeads) SizeLogits(layer, template int) []float64 {
	i := layer*h.k + template
	return h.d.Size[i*h.z : (i+1)*h.z]
}

// NewDecider returns a Decider of m.
func (m *Model) NewDecider() *Decider { return &Decider{model: m} }

// Model is the decider's model.
func (d *Decider) Model() *Model { return d.model }

// Decide is Model.Decide with d's buffers: g.Encoded when set, else g
// encoded into d's encoding. On a model loaded on ONNX Runtime (LoadOn)
// the forward runs there (its float32 outputs for every head at once; it
// allocates them), and the choice is the same masked argmax.
func (d *Decider) Decide(g *Graph) (Action, error) {
	if err := d.model.fits(g); err != nil {
		return Action{}, err
	}
	enc := g.Encoded
	if enc == nil {
		if err := EncodeInto(&d.enc, g); err != nil {
			return Action{}, err
		}
		enc = &d.enc
	}
	var st heads = &d.st
	if om := d.model.onnx; om != nil {
		dense, err := d.model.runONNX(om, enc)
		if err != nil {
			return Action{}, err
		}
		d.dense = denseHeads{d: dense, k: len(dense.Template) / enc.Layers, z: len(dense.Size) / len(dense.Template)}
		st = &d.dense
	} else if err := d.model.net.RunInto(&d.st, enc); err != nil {
		return Action{}, fmt.Errorf("graphpolicy: decide: %w", err)
	}
	a := Action{Layer: -1, Slot: -1, Value: st.Value()}
	op, err := argmax(st.OpLogits(), g.Masks.Op, "op", "")
	if err != nil {
		return Action{}, err
	}
	a.Op = g.Ops[op]
	if op == 0 {
		return a, nil
	}
	t := len(enc.TargetLayer)
	target, err := argmax(st.TargetLogits()[(op-1)*t:op*t], g.Masks.Target[a.Op], "target", a.Op)
	if err != nil {
		return Action{}, err
	}
	a.Layer, a.Slot = target/g.Slots, target%g.Slots
	if a.Op != tamiyo.MoveGerminate {
		return a, nil
	}
	k, err := argmax(st.TemplateLogits(a.Layer), g.Masks.Template[a.Layer], "template", "")
	if err != nil {
		return Action{}, err
	}
	z, err := argmax(st.SizeLogits(a.Layer, k), g.Masks.Size[a.Layer][k], "size", "")
	if err != nil {
		return Action{}, err
	}
	a.Template, a.Size = g.Templates[k], z
	return a, nil
}

// fits checks that g's heads are the model's.
func (m *Model) fits(g *Graph) error {
	mf := &m.manifest
	if !slices.Equal(g.Ops, mf.Ops) || !slices.Equal(g.Templates, mf.Templates) || !slices.Equal(g.Sizes, mf.Sizes) {
		return fmt.Errorf("graphpolicy: the graph's ops, templates or sizes (%d, %d, %d) are not the model's (%d, %d, %d): it was trained with another library; retrain with `%s`: %w",
			len(g.Ops), len(g.Templates), len(g.Sizes), len(mf.Ops), len(mf.Templates), len(mf.Sizes), TrainCommand, ErrGraph)
	}
	if len(g.Masks.Op) != len(g.Ops) || len(g.Masks.Template) != g.Layers || len(g.Masks.Size) != g.Layers {
		return fmt.Errorf("graphpolicy: the graph's masks do not have its shape: %w", ErrGraph)
	}
	return nil
}

// argmax returns the index of the largest logit among the legal ones (the
// first on a tie, as torch.argmax). head (and op, "" for none) name the
// head in errors.
func argmax(logits []float64, legal []bool, head, op string) (int, error) {
	if len(legal) != len(logits) {
		return 0, fmt.Errorf("graphpolicy: the %s head has %d logits and %d mask entries: %w", headName(head, op), len(logits), len(legal), ErrGraph)
	}
	best, bv := -1, math.Inf(-1)
	for i, ok := range legal {
		if ok && (best < 0 || logits[i] > bv) {
			best, bv = i, logits[i]
		}
	}
	if best < 0 {
		return 0, fmt.Errorf("graphpolicy: every choice of the %s head is masked: %w", headName(head, op), ErrGraph)
	}
	return best, nil
}

// headName is head, or "head of op" for an op's head.
func headName(head, op string) string {
	if op == "" {
		return head
	}
	return head + " of " + op
}

// Forward encodes g (replacing g.Encoded) and runs the network on it,
// returning every head's output on every target, layer, template and size
// (what a parity test compares with PyTorch and ONNX Runtime), with the
// decision Decide takes.
func (m *Model) Forward(g *Graph) (gnn.Dense, Action, error) {
	if err := m.fits(g); err != nil {
		return gnn.Dense{}, Action{}, err
	}
	enc, err := Encode(g)
	if err != nil {
		return gnn.Dense{}, Action{}, err
	}
	g.Encoded = enc // the decision below reads this encoding, not one a caller gave
	st, err := m.net.Run(enc)
	if err != nil {
		return gnn.Dense{}, Action{}, fmt.Errorf("graphpolicy: forward: %w", err)
	}
	a, err := m.Decide(g)
	if err != nil {
		return gnn.Dense{}, Action{}, err
	}
	return st.Dense(), a, nil
}
