package session

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"

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
	return s.graphLocked()
}

// graphLocked builds the graph (see Graph) with its encoding
// (graphpolicy.Encode) in new memory the caller owns.
func (s *Session) graphLocked() (Graph, error) {
	var g Graph
	if err := s.fillGraphLocked(&g, &graphBuffers{}, false); err != nil {
		return Graph{}, err
	}
	return g, nil
}

// graphBuffers is the memory a graph's masks and encoding are built in,
// kept by the ppo policy from one decision to the next.
type graphBuffers struct {
	enc                        graphpolicy.Encoded
	tplFlat, sizeFlat, canGrow []bool
	sizeRows                   [][]bool
	paramRows                  [][]int64
}

// fillGraphLocked builds the graph (see Graph) with its encoding into g,
// reusing g's slices and maps and buf (a graph built again into the same g
// and buf allocates no memory per node). With share, the masks'
// SizeParams rows and the template names are the session's cached tables
// themselves, not copies: for callers inside the session that only read the
// graph (the ppo policy's decision).
func (s *Session) fillGraphLocked(g *Graph, buf *graphBuffers, share bool) error {
	layers := len(s.set.hosts)
	used, active := s.paramsUsedLocked()
	gov := s.ctl.Governor()
	g.Epoch, g.Step, g.Layers, g.Slots = s.epoch, s.step, layers, s.slots
	if g.Ops == nil {
		g.Ops, g.Sizes = tamiyo.MoveOps(), tamiyo.SizeScales()
	}
	// The layer nodes come first: a graph built again finds each layer's
	// signals map where it left it.
	prev := g.Nodes[:cap(g.Nodes)]
	g.Nodes = g.Nodes[:0]
	if cap(g.Nodes) < layers+len(s.seeds) {
		g.Nodes = make([]GraphNode, 0, layers+len(s.seeds))
	}
	if g.Edges == nil {
		g.Edges = make([]GraphEdge, 0, layers+len(s.seeds))
	}
	g.Edges = g.Edges[:0]
	hostParams := int64(0)
	for l := range layers {
		h := s.hostOfLocked(l)
		var signals map[string]nissa.Num
		if l < len(prev) {
			signals = prev[l].Signals
		}
		if signals == nil {
			signals = make(map[string]nissa.Num, nissa.NumSignals)
		}
		n := GraphNode{Kind: "layer", Layer: l, Slot: -1, Name: s.set.names[l], Host: h.Kind, In: h.In, Out: h.Out,
			Params: s.set.cfg.Layers[l].Params, Signals: signals, Cooldown: gov.Cooldown(l, s.epoch),
			Contribution: nissa.Num(math.NaN())}
		if h.Kind == blueprint.HostResidual {
			n.In, n.Out = h.Dim, h.Dim
		}
		for sig := nissa.Signal(0); sig < nissa.NumSignals; sig++ {
			v, _ := s.stats.LayerMean(l, sig) // NaN when not measured
			n.Signals[sig.String()] = nissa.Num(v)
		}
		g.Nodes = append(g.Nodes, n)
		hostParams += n.Params
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
		HostParams: hostParams, Active: active, MaxConcurrent: gov.Config().MaxConcurrent,
		Epochs: s.ctl.Config().Epochs, LifecycleSteps: s.set.cfg.TrainSteps + s.set.cfg.BlendSteps,
		ValLosses: s.ctl.ValLosses(graphValLosses)}
	s.masksLocked(g, buf, used, active, share)
	if err := graphpolicy.EncodeInto(&buf.enc, g); err != nil {
		return fmt.Errorf("session: graph: %w", err)
	}
	g.Encoded = &buf.enc
	return nil
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

// masksLocked computes the legal moves (see GraphMasks) into g.Masks and
// g.Templates, reusing their memory and buf's.
func (s *Session) masksLocked(g *Graph, buf *graphBuffers, used int64, active int, share bool) {
	names, counts := s.sizeParamsLocked()
	g.Templates = names
	if !share {
		g.Templates = slices.Clone(names)
	}
	layers, sizes, k := len(s.set.hosts), len(tamiyo.SizeScales()), len(names)
	m := &g.Masks
	m.Op = resized(m.Op, len(g.Ops))
	clear(m.Op)
	if m.Target == nil {
		m.Target = make(map[string][]bool, len(g.Ops)-1)
	}
	for _, op := range g.Ops[1:] {
		t := resized(m.Target[op], len(s.seeds))
		clear(t)
		m.Target[op] = t
	}
	m.Template, m.Size, m.SizeParams = resized(m.Template, layers), resized(m.Size, layers), resized(m.SizeParams, layers)
	gov := s.ctl.Governor()
	// One backing array per table (not one slice per layer and template):
	// at 200 layers the masks were mostly allocations.
	buf.canGrow, buf.tplFlat, buf.sizeFlat = resized(buf.canGrow, layers), resized(buf.tplFlat, layers*k), resized(buf.sizeFlat, layers*k*sizes)
	clear(buf.canGrow)
	clear(buf.tplFlat)
	clear(buf.sizeFlat)
	buf.sizeRows, buf.paramRows = resized(buf.sizeRows, layers*k), resized(buf.paramRows, layers*k)
	var paramFlat []int64
	if !share {
		paramFlat = make([]int64, 0, layers*k*sizes)
	}
	for l := range layers {
		m.Template[l] = buf.tplFlat[l*k : (l+1)*k : (l+1)*k]
		m.Size[l] = buf.sizeRows[l*k : (l+1)*k : (l+1)*k]
		m.SizeParams[l] = buf.paramRows[l*k : (l+1)*k : (l+1)*k]
		for t := range k {
			m.SizeParams[l][t] = counts[l][t]
			if !share {
				n := len(paramFlat)
				paramFlat = append(paramFlat, counts[l][t]...)
				m.SizeParams[l][t] = paramFlat[n:len(paramFlat):len(paramFlat)]
			}
			row := buf.sizeFlat[(l*k+t)*sizes : (l*k+t+1)*sizes : (l*k+t+1)*sizes]
			m.Size[l][t] = row
			for z, params := range counts[l][t] {
				if params > 0 && gov.Admits(used, params, active) {
					row[z] = true
					m.Template[l][t] = true
					buf.canGrow[l] = true
				}
			}
		}
	}
	target := func(op string) []bool { return m.Target[op] }
	germ, prune, foss, adv := target(tamiyo.MoveGerminate), target(tamiyo.MovePrune), target(tamiyo.MoveFossilize), target(tamiyo.MoveAdvance)
	for i, sd := range s.seeds {
		germ[i] = buf.canGrow[sd.Layer] && lifecycle.CanTransition(sd.State, lifecycle.Germinated)
		prune[i] = lifecycle.CanTransition(sd.State, lifecycle.Pruned)
		foss[i] = lifecycle.CanTransition(sd.State, lifecycle.Fossilized)
		adv[i] = tamiyo.AdvanceLegal(sd.State)
	}
	m.Op[0] = true // wait
	for k, op := range g.Ops[1:] {
		for _, ok := range m.Target[op] {
			m.Op[k+1] = m.Op[k+1] || ok
		}
	}
}

// resized returns x with length n (its contents left as they were),
// reallocating only when its capacity is short or x is nil (a graph's
// slices are never nil, so that its JSON holds [] and not null).
func resized[T any](x []T, n int) []T {
	if x == nil || cap(x) < n {
		return make([]T, n)
	}
	return x[:n]
}

// sizeParamsLocked returns the library's template names (sorted, as
// blueprint.Templates) and, per layer, template and size, the parameter
// count of the seed tamiyo.Sized makes (0 where it makes none). The hosts
// never change, so both are computed once per session (the masks' cost is
// then the governor's checks: 200 layers took 0.6 s per graph without it).
func (s *Session) sizeParamsLocked() ([]string, [][][]int64) {
	if s.sizeParams != nil {
		return s.tplNames, s.sizeParams
	}
	templates := blueprint.Templates()
	s.tplNames = make([]string, len(templates))
	for i, t := range templates {
		s.tplNames[i] = t.Name
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
	return s.tplNames, out
}
