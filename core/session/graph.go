package session

import (
	"encoding/json"
	"fmt"
	"math"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/core/lifecycle"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/policy/graphpolicy"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// The layer graph's types are policy/graphpolicy's (the graph policy's
// observation); the session builds them.
type (
	// Graph is Tamiyo's layer graph with the legal moves (see Session.Graph).
	Graph = graphpolicy.Graph
	// GraphNode is one node of the layer graph.
	GraphNode = graphpolicy.Node
	// GraphEdge is a directed edge of the layer graph.
	GraphEdge = graphpolicy.Edge
	// GraphGlobal holds the run-wide features of a graph.
	GraphGlobal = graphpolicy.Global
	// GraphMasks are the legal moves.
	GraphMasks = graphpolicy.Masks
)

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
	return s.graphLocked(false)
}

// graphLocked builds the graph (see Graph) with its encoding
// (graphpolicy.Encode). With share, the masks' SizeParams are the session's
// cached table itself, not a copy: for callers inside the session that only
// read the graph (the ppo policy's decision).
func (s *Session) graphLocked(share bool) (Graph, error) {
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
			Template: s.templateLocked(sd), Generation: sd.Generation, Contribution: nissa.Num(s.mon.impacts.LastMeasured(i))}
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
	g.Templates, g.Masks = s.masksLocked(used, active, share)
	enc, err := graphpolicy.Encode(&g)
	if err != nil {
		return Graph{}, fmt.Errorf("session: graph: %w", err)
	}
	g.Encoded = enc
	return g, nil
}

// graphValLosses is how many validation losses a graph carries.
const graphValLosses = 8

// maxTemplateCache bounds Session.tplByID.
const maxTemplateCache = 4096

// templateLocked returns the template of seed sd's blueprint, decoded once
// per blueprint id (the id hashes the document, so the cache is exact).
func (s *Session) templateLocked(sd *lifecycle.Seed) string {
	if t, ok := s.tplByID[sd.BlueprintID]; ok {
		return t
	}
	t := templateOf(sd.Blueprint)
	if s.tplByID == nil {
		s.tplByID = map[string]string{}
	}
	if len(s.tplByID) < maxTemplateCache {
		s.tplByID[sd.BlueprintID] = t
	}
	return t
}

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
func (s *Session) masksLocked(used int64, active int, share bool) ([]string, GraphMasks) {
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
	// One backing array per table (not one slice per layer and template):
	// at 200 layers the masks were mostly allocations.
	k := len(templates)
	tplFlat, sizeRows, sizeFlat := make([]bool, layers*k), make([][]bool, layers*k), make([]bool, layers*k*sizes)
	paramRows := make([][]int64, layers*k)
	var paramFlat []int64
	if !share {
		paramFlat = make([]int64, 0, layers*k*sizes)
	}
	for l := range layers {
		m.Template[l] = tplFlat[l*k : (l+1)*k : (l+1)*k]
		m.Size[l] = sizeRows[l*k : (l+1)*k : (l+1)*k]
		m.SizeParams[l] = paramRows[l*k : (l+1)*k : (l+1)*k]
		for k := range templates {
			m.SizeParams[l][k] = counts[l][k]
			if !share {
				n := len(paramFlat)
				paramFlat = append(paramFlat, counts[l][k]...)
				m.SizeParams[l][k] = paramFlat[n:len(paramFlat):len(paramFlat)]
			}
			m.Size[l][k] = sizeFlat[(l*len(templates)+k)*sizes : (l*len(templates)+k+1)*sizes : (l*len(templates)+k+1)*sizes]
			for z, params := range counts[l][k] {
				if params > 0 && gov.Admits(used, params, active) {
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
