package session

import (
	"encoding/json"
	"math"
	"slices"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// GraphNode is one node of Tamiyo's layer graph: a wrapped layer (Kind
// "layer", Slot -1) or a live seed (Kind "seed").
type GraphNode struct {
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

// GraphEdge is a directed edge of the layer graph, between node indices:
// Kind "flow" (data flows from layer From to layer To, in wrapping order)
// or "seed" (seed From adds its output to layer To).
type GraphEdge struct {
	From int    `json:"from"`
	To   int    `json:"to"`
	Kind string `json:"kind"`
}

// GraphGlobal holds the run-wide features of a graph.
type GraphGlobal struct {
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

// GraphMasks are the legal moves: what the session would carry out now
// (Propose refuses everything else). Targets are slots, layer-major
// (layer*slots + slot).
type GraphMasks struct {
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
// policy observes (see Session.Graph).
type Graph struct {
	Epoch int   `json:"epoch"`
	Step  int64 `json:"step"`
	// Layers and Slots give the shape of the targets (Layers*Slots).
	Layers int         `json:"layers"`
	Slots  int         `json:"slots"`
	Nodes  []GraphNode `json:"nodes"`
	Edges  []GraphEdge `json:"edges"`
	Global GraphGlobal `json:"global"`
	// Ops, Templates and Sizes name the heads' choices, in order.
	Ops       []string   `json:"ops"`
	Templates []string   `json:"templates"`
	Sizes     []float64  `json:"sizes"`
	Masks     GraphMasks `json:"masks"`
}

// Graph returns the layer graph (nodes: the wrapped layers, then the live
// seeds; edges: data flow between consecutive layers in wrapping order and
// each seed into its layer) with the legal moves, computed from the
// lifecycle's transitions and the governor's limits: the same rules
// Propose applies.
func (s *Session) Graph() (Graph, error) {
	if err := s.lock(); err != nil {
		return Graph{}, err
	}
	defer s.unlock()
	layers := len(s.set.hosts)
	used, active := s.paramsUsedLocked()
	gov := s.ctl.Governor()
	g := Graph{Epoch: s.epoch, Step: s.step, Layers: layers, Slots: s.slots, Ops: tamiyo.MoveOps(),
		Sizes: tamiyo.SizeScales(), Nodes: make([]GraphNode, 0, layers+len(s.seeds)), Edges: []GraphEdge{}}
	for l := range layers {
		h := s.hostOfLocked(l)
		n := GraphNode{Kind: "layer", Layer: l, Slot: -1, Name: s.set.names[l], Host: h.Kind, In: h.In, Out: h.Out,
			Params: s.set.cfg.Layers[l].Params, Signals: make(map[string]nissa.Num, nissa.NumSignals),
			Cooldown: gov.Cooldown(l, s.epoch), Contribution: nissa.Num(math.NaN())}
		if h.Kind == blueprint.HostResidual {
			n.In, n.Out = h.Dim, h.Dim
		}
		for sig := nissa.Signal(0); sig < nissa.NumSignals; sig++ {
			sum, _ := s.stats.Layer(l, sig)
			v := math.NaN()
			if sum.N > 0 {
				v = sum.Mean
			}
			n.Signals[sig.String()] = nissa.Num(v)
		}
		g.Nodes = append(g.Nodes, n)
		g.Global.HostParams += n.Params
		if l > 0 {
			g.Edges = append(g.Edges, GraphEdge{From: l - 1, To: l, Kind: "flow"})
		}
	}
	for i, sd := range s.seeds {
		if sd.State == lifecycle.Dormant {
			g.Nodes[sd.Layer].Dormant++
			continue
		}
		if !sd.State.Live() && !sd.State.Exiting() {
			continue
		}
		n := GraphNode{Kind: "seed", Layer: sd.Layer, Slot: sd.Slot, Name: s.set.names[sd.Layer], Params: sd.ParamCount,
			State: sd.State.String(), Alpha: sd.Alpha, StepsInState: sd.StepsInState, EpochsInState: s.epochsIn[i],
			Template: templateOf(sd.Blueprint), Generation: sd.Generation, Contribution: nissa.Num(s.mon.impacts.LastMeasured(i))}
		g.Edges = append(g.Edges, GraphEdge{From: len(g.Nodes), To: sd.Layer, Kind: "seed"})
		g.Nodes = append(g.Nodes, n)
	}
	remaining := math.NaN()
	if mp := gov.Config().MaxParams; mp > 0 {
		remaining = float64(gov.Remaining(used))
	}
	g.Global = GraphGlobal{ParamsUsed: used, MaxParams: gov.Config().MaxParams, Remaining: nissa.Num(remaining),
		HostParams: g.Global.HostParams, Active: active, MaxConcurrent: gov.Config().MaxConcurrent,
		Epochs: s.ctl.Config().Epochs, LifecycleSteps: s.set.cfg.TrainSteps + s.set.cfg.BlendSteps,
		ValLosses: s.ctl.ValLosses(graphValLosses)}
	g.Templates, g.Masks = s.masksLocked(used, active)
	return g, nil
}

// graphValLosses is how many validation losses a graph carries.
const graphValLosses = 8

// templateOf returns the template named in a canonical blueprint document.
func templateOf(doc []byte) string {
	if len(doc) == 0 {
		return ""
	}
	var ir struct {
		Template string `json:"template"`
	}
	if err := json.Unmarshal(doc, &ir); err != nil {
		return ""
	}
	return ir.Template
}

// masksLocked computes the legal moves (see GraphMasks).
func (s *Session) masksLocked(used int64, active int) ([]string, GraphMasks) {
	templates := blueprint.Templates()
	names := make([]string, len(templates))
	for i, t := range templates {
		names[i] = t.Name
	}
	layers, sizes := len(s.set.hosts), len(tamiyo.SizeScales())
	ops := tamiyo.MoveOps()
	m := GraphMasks{Op: make([]bool, len(ops)), Target: make(map[string][]bool, len(ops)-1),
		Template: make([][]bool, layers), Size: make([][][]bool, layers), SizeParams: make([][][]int64, layers)}
	for _, op := range ops[1:] {
		m.Target[op] = make([]bool, len(s.seeds))
	}
	canGrow := make([]bool, layers)
	gov := s.ctl.Governor()
	counts := s.sizeParamsLocked(templates)
	for l := range layers {
		m.Template[l] = make([]bool, len(templates))
		m.Size[l] = make([][]bool, len(templates))
		m.SizeParams[l] = make([][]int64, len(templates))
		for k := range templates {
			m.SizeParams[l][k] = slices.Clone(counts[l][k])
			m.Size[l][k] = make([]bool, sizes)
			for z, params := range counts[l][k] {
				if params > 0 && gov.Admit(used, params, active) == nil {
					m.Size[l][k][z] = true
					m.Template[l][k] = true
					canGrow[l] = true
				}
			}
		}
	}
	for i, sd := range s.seeds {
		m.Target[tamiyo.MoveGerminate][i] = canGrow[sd.Layer] && lifecycle.CanTransition(sd.State, lifecycle.Germinated)
		m.Target[tamiyo.MovePrune][i] = lifecycle.CanTransition(sd.State, lifecycle.Pruned)
		m.Target[tamiyo.MoveFossilize][i] = lifecycle.CanTransition(sd.State, lifecycle.Fossilized)
		m.Target[tamiyo.MoveAdvance][i] = tamiyo.AdvanceLegal(sd.State)
	}
	m.Op[0] = true // wait
	for k, op := range ops[1:] {
		for _, ok := range m.Target[op] {
			m.Op[k+1] = m.Op[k+1] || ok
		}
	}
	return names, m
}

// sizeParamsLocked returns, per layer, template and size, the parameter
// count of the seed tamiyo.Sized makes (0 where it makes none). The hosts
// never change, so the table is computed once per session (the masks'
// cost is then the governor's checks: 200 layers took 0.6 s per graph
// without it).
func (s *Session) sizeParamsLocked(templates []blueprint.Template) [][][]int64 {
	if s.sizeParams != nil {
		return s.sizeParams
	}
	sizes := len(tamiyo.SizeScales())
	out := make([][][]int64, len(s.set.hosts))
	for l := range out {
		out[l] = make([][]int64, len(templates))
		for k, t := range templates {
			out[l][k] = make([]int64, sizes)
			for z := range sizes {
				if ir, err := tamiyo.Sized(t, s.hostOfLocked(l), z); err == nil {
					out[l][k][z] = ir.ParamCount
				}
			}
		}
	}
	s.sizeParams = out
	return out
}
