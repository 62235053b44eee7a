package graphpolicy

import (
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// Node is one node of Tamiyo's layer graph: a wrapped layer (Kind
// "layer", Slot -1) or a live seed (Kind "seed").
type Node struct {
	Kind  string `json:"kind"`
	Layer int    `json:"layer"`
	Slot  int    `json:"slot"`
	// Name is the layer's name.
	Name string `json:"name"`
	// Host, In and Out describe the layer's host (layers only).
	Host string `json:"host,omitempty"`
	In   int64  `json:"in,omitempty"`
	Out  int64  `json:"out,omitempty"`
	// Params is the host layer's own parameter count (layers) or the
	// seed's (seeds).
	Params int64 `json:"params"`
	// Signals holds the window mean of each of Nissa's signals, by name
	// (null: not measured); layers only.
	Signals map[string]nissa.Num `json:"signals,omitempty"`
	// Cooldown is the epochs the governor still rests the layer (layers).
	Cooldown int `json:"cooldown"`
	// Dormant counts the layer's dormant slots (layers).
	Dormant int `json:"dormant"`
	// State, Alpha, StepsInState, EpochsInState, Template and Generation
	// describe a seed.
	State         string  `json:"state,omitempty"`
	Alpha         float64 `json:"alpha"`
	StepsInState  int64   `json:"steps_in_state"`
	EpochsInState int     `json:"epochs_in_state"`
	Template      string  `json:"template,omitempty"`
	Generation    int     `json:"generation"`
	// Contribution is the seed's last measured contribution (validation
	// loss without it minus with it; null when none was measured).
	Contribution nissa.Num `json:"contribution"`
}

// Edge is a directed edge of the layer graph, between node indices:
// Kind "flow" (data flows from layer From to layer To, in wrapping order)
// or "seed" (seed From adds its output to layer To).
type Edge struct {
	From int    `json:"from"`
	To   int    `json:"to"`
	Kind string `json:"kind"`
}

// Global holds the run-wide features of a graph.
type Global struct {
	// ParamsUsed counts the parameters of live and fossilized seeds;
	// MaxParams is the governor's budget (0: none) and Remaining what is
	// left of it (null when there is no budget).
	ParamsUsed int64     `json:"params_used"`
	MaxParams  int64     `json:"max_params"`
	Remaining  nissa.Num `json:"remaining"`
	// HostParams sums the wrapped layers' own parameters.
	HostParams int64 `json:"host_params"`
	// Active counts the seeds in flight; MaxConcurrent is the governor's
	// limit.
	Active        int `json:"active"`
	MaxConcurrent int `json:"max_concurrent"`
	// Epochs is the planned run length (0: unknown) and LifecycleSteps the
	// steps from germination to full weight.
	Epochs         int   `json:"epochs"`
	LifecycleSteps int64 `json:"lifecycle_steps"`
	// ValLosses are the last finite validation losses, oldest first.
	ValLosses []tamiyo.EpochValue `json:"val_losses"`
}

// Masks are the legal moves: what the session would carry out now
// (the session's Propose refuses everything else). Targets are slots, layer-major
// (layer*slots + slot).
type Masks struct {
	// Op is indexed like Graph.Ops: an op is legal when some target is.
	Op []bool `json:"op"`
	// Target holds, per op but wait, the legal target slots.
	Target map[string][]bool `json:"target"`
	// Template holds, per layer, the templates (indexed like
	// Graph.Templates) a germination there may use: some size of it fits.
	Template [][]bool `json:"template"`
	// Size holds, per layer and template, the legal sizes (indexed like
	// Graph.Sizes): the host supports it and the governor admits it.
	Size [][][]bool `json:"size"`
	// SizeParams holds, per layer and template, each size's parameter
	// count (0 where it does not instantiate).
	SizeParams [][][]int64 `json:"size_params"`
}

// Graph is Tamiyo's layer graph with the legal moves: what a learned
// policy observes (core/session's Session.Graph builds it).
type Graph struct {
	Epoch int   `json:"epoch"`
	Step  int64 `json:"step"`
	// Layers and Slots give the shape of the targets (Layers*Slots).
	Layers int    `json:"layers"`
	Slots  int    `json:"slots"`
	Nodes  []Node `json:"nodes"`
	Edges  []Edge `json:"edges"`
	Global Global `json:"global"`
	// Ops, Templates and Sizes name the heads' choices, in order.
	Ops       []string  `json:"ops"`
	Templates []string  `json:"templates"`
	Sizes     []float64 `json:"sizes"`
	Masks     Masks     `json:"masks"`
	// Encoded is the graph as the network's input (see Encode): the one
	// encoding both the Go forward and the PyTorch trainer read.
	Encoded *Encoded `json:"encoded,omitempty"`
}
