package karn

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"time"

	"github.com/esper-morph/esper/blueprint"
	"github.com/esper-morph/esper/blueprint/canon"
)

// Ranking methods (Answer.RankedBy).
const (
	RankedByPredictor = "predictor"
	RankedByPrior     = "prior"
)

// Candidate origins (Candidate.Origin).
const (
	OriginTemplate  = "template"  // a library template at its defaults, shrunk to the budget
	OriginHistory   = "history"   // a blueprint that paid before on a host of this layout
	OriginMutation  = "mutation"  // one parameter of a parent changed
	OriginCrossover = "crossover" // two parents' parameters mixed
)

// historySeeds is how many of the best past trials seed a search.
const historySeeds = 8

// Candidate is one blueprint of an answer.
type Candidate struct {
	// Rank is its place in the answer, from 1.
	Rank int `json:"rank"`
	// Template and Params name it; BlueprintID is its canonical id.
	Template    string           `json:"template"`
	Params      blueprint.Params `json:"params"`
	BlueprintID string           `json:"blueprint_id"`
	// ParamCount and FLOPsPerSample are Karn's exact counts.
	ParamCount     int64 `json:"param_count"`
	FLOPsPerSample int64 `json:"flops_per_sample"`
	// PredictedGain is the predictor's gain (relative contribution); null
	// when the answer is ranked by the prior.
	PredictedGain *float64 `json:"predicted_gain"`
	// PriorGain is the mean measured gain of its template on hosts of this
	// layout in the request's history; null when the history has none.
	PriorGain *float64 `json:"prior_gain"`
	// Origin says how the search found it (Origin* constants).
	Origin string `json:"origin"`
	// IR is the canonical IR (valid on the host, within the budget).
	IR json.RawMessage `json:"ir"`

	ir *blueprint.IR
}

// Blueprint returns the candidate's validated IR (nil for a candidate
// decoded from JSON).
func (c *Candidate) Blueprint() *blueprint.IR { return c.ir }

// Answer is Karn's reply to a request.
type Answer struct {
	// Request is the request's ID.
	Request string `json:"request"`
	// Candidates are the best blueprints found, best first (none when no
	// template supports the host or none fits the budget).
	Candidates []Candidate `json:"candidates"`
	// RankedBy is RankedByPredictor or RankedByPrior; Predictor says what
	// the predictor was fitted on, or why the prior ranked instead.
	RankedBy  string `json:"ranked_by"`
	Predictor string `json:"predictor"`
	// Evaluated counts the blueprints the search tried, Valid the distinct
	// ones that were valid within the budget, HistorySeeds the past trials
	// it started from.
	Evaluated    int `json:"evaluated"`
	Valid        int `json:"valid"`
	HistorySeeds int `json:"history_seeds"`
	// ElapsedUS is the search's wall time in microseconds.
	ElapsedUS int64 `json:"elapsed_us"`
	// Note says why there are no candidates, when there are none.
	Note string `json:"note,omitempty"`
}

type entry struct {
	ir     *blueprint.IR
	origin string
	score  float64
	pred   *float64
	prior  *float64
	pref   int
}

type searcher struct {
	req     *Request
	pred    *Predictor
	rng     *rand.Rand
	lib     []blueprint.Template
	pool    []*entry
	seen    map[string]bool
	tries   int
	limit   int
	prior   map[string]float64 // template -> mean measured gain on this layout
	signals Signals
}

// Search answers a request: it validates it, searches the IR space under
// the constraint checker (see the package documentation) and returns the
// best req.Count candidates, ranked by pred when it is non-nil and fitted
// on records of the host's layout, else by the prior (see Prior). Every candidate is valid on req.Host and within
// req.Budget, checked by blueprint.Check. A request no template can serve
// is answered with no candidates and a note, not an error.
func Search(req Request, pred *Predictor, predNote string) (Answer, error) {
	start := time.Now()
	if err := req.Validate(); err != nil {
		return Answer{}, err
	}
	deadline := start.Add(req.timeBudget())
	s := &searcher{req: &req, pred: pred, rng: rand.New(rand.NewPCG(req.Seed, req.Seed^0x9e3779b97f4a7c15)),
		seen: map[string]bool{}, limit: req.evaluations(), signals: req.Signals}
	for _, t := range blueprint.Templates() {
		if t.Supports(req.Host) {
			s.lib = append(s.lib, t)
		}
	}
	s.prior = priorGains(&req)
	ans := Answer{Request: req.ID, Candidates: []Candidate{}, RankedBy: RankedByPrior, Predictor: predNote}
	if pred != nil && !pred.Covers(req.Host.Layout()) {
		ans.Predictor = fmt.Sprintf("the predictor (%s) has no record of a %s host", predNote, req.Host.Layout())
		s.pred = nil
	}
	if s.pred != nil {
		ans.RankedBy = RankedByPredictor
	}
	if len(s.lib) == 0 {
		ans.Note = fmt.Sprintf("%v (%s)", errNoTemplate, req.Host.Layout())
		ans.ElapsedUS = time.Since(start).Microseconds()
		return ans, nil
	}
	for _, t := range s.lib {
		s.add(s.fitBudget(t, nil), OriginTemplate)
	}
	for _, tr := range bestTrials(&req) {
		if t, err := blueprint.Lookup(tr.Template); err == nil && t.Supports(req.Host) {
			if s.add(s.fitBudget(t, tr.Params), OriginHistory) {
				ans.HistorySeeds++
			}
		}
	}
	for s.tries < s.limit && len(s.pool) > 0 && time.Now().Before(deadline) {
		a := s.parent()
		if len(s.pool) > 1 && s.rng.IntN(2) == 0 {
			b := s.parent()
			if t, p, ok := s.crossover(a, b); ok {
				s.add(s.fitBudget(t, p), OriginCrossover)
				continue
			}
		}
		s.tries++
		child, err := blueprint.Mutate(a.ir, req.Budget, s.rng)
		if err == nil {
			s.add(child, OriginMutation)
		}
	}
	s.rank()
	ans.Evaluated, ans.Valid = s.tries, len(s.pool)
	for i, e := range s.pool[:min(len(s.pool), req.count())] {
		c, err := e.candidate(i + 1)
		if err != nil {
			return Answer{}, err
		}
		ans.Candidates = append(ans.Candidates, c)
	}
	if len(ans.Candidates) == 0 {
		ans.Note = fmt.Sprintf("no blueprint of %d supporting templates fits the budget (max_params %d, max_flops %d)",
			len(s.lib), req.Budget.MaxParams, req.Budget.MaxFLOPs)
	}
	ans.ElapsedUS = time.Since(start).Microseconds()
	return ans, nil
}

func (e *entry) candidate(rank int) (Candidate, error) {
	b, err := e.ir.Canonical()
	if err != nil {
		return Candidate{}, fmt.Errorf("karn: candidate %s: %w", e.ir.Template, err)
	}
	return Candidate{Rank: rank, Template: e.ir.Template, Params: maps.Clone(e.ir.Params), BlueprintID: canon.ID(b),
		ParamCount: e.ir.ParamCount, FLOPsPerSample: e.ir.FLOPsPerSample, PredictedGain: e.pred, PriorGain: e.prior,
		Origin: e.origin, IR: b, ir: e.ir}, nil
}

// add counts one try and keeps ir when it is new, valid on the host and
// within the budget.
func (s *searcher) add(ir *blueprint.IR, origin string) bool {
	s.tries++
	if ir == nil {
		return false
	}
	// Parameters that build the same graph (a reduction past the channel
	// count, say) are one blueprint: the key is the ops, not the params.
	ops, _ := json.Marshal(ir.Ops)
	key := ir.Template + string(ops)
	if s.seen[key] {
		return false
	}
	s.seen[key] = true
	if blueprint.Check(ir, s.req.Host, s.req.Budget) != nil || ir.ParamCount < s.req.MinParams {
		return false
	}
	e := &entry{ir: ir, origin: origin, pref: len(s.req.Prefer)}
	if i := slices.Index(s.req.Prefer, ir.Template); i >= 0 {
		e.pref = i
	}
	if g, ok := s.prior[ir.Template]; ok {
		e.prior = &g
	}
	if s.pred != nil {
		smp := Sample{Template: ir.Template, Params: ir.Params, Host: s.req.Host, ParamCount: ir.ParamCount,
			FLOPsPerSample: ir.FLOPsPerSample, Signals: s.signals}
		g := s.pred.Predict(&smp)
		e.pred, e.score = &g, g
	} else if e.prior != nil {
		e.score = *e.prior
	}
	s.pool = append(s.pool, e)
	return true
}

func describe(p blueprint.Params) string {
	b, _ := json.Marshal(p) // map keys sorted; values are int64, bool or string
	return string(b)
}

// parent draws a parent by a tournament of two on the score.
func (s *searcher) parent() *entry {
	a, b := s.pool[s.rng.IntN(len(s.pool))], s.pool[s.rng.IntN(len(s.pool))]
	if better(b, a) {
		return b
	}
	return a
}

// crossover mixes two parents' parameters into a template of one of them:
// each parameter of that template takes a parent's value (either's at
// random when both have it). Templates without parameters do not cross.
func (s *searcher) crossover(a, b *entry) (blueprint.Template, blueprint.Params, bool) {
	if s.rng.IntN(2) == 0 {
		a, b = b, a
	}
	t, err := blueprint.Lookup(a.ir.Template)
	if err != nil || len(t.Params) == 0 {
		return t, nil, false
	}
	p := blueprint.Params{}
	for _, spec := range t.Params {
		va, okA := a.ir.Params[spec.Name]
		vb, okB := b.ir.Params[spec.Name]
		switch {
		case okA && okB:
			if s.rng.IntN(2) == 0 {
				p[spec.Name] = va
			} else {
				p[spec.Name] = vb
			}
		case okA:
			p[spec.Name] = va
		case okB:
			p[spec.Name] = vb
		}
	}
	if _, err := t.Resolve(p); err != nil {
		return t, nil, false
	}
	return t, p, true
}

// fitBudget instantiates t with params on the request's host and, while it
// is over budget, takes the smallest variant one integer parameter halved
// or doubled gives (halving a width, doubling a reduction), for as long as
// that shrinks it. nil when it cannot be made to fit.
func (s *searcher) fitBudget(t blueprint.Template, params blueprint.Params) *blueprint.IR {
	ir, err := t.Instantiate(params, s.req.Host)
	if err != nil {
		return nil
	}
	for range 64 {
		if overBudget(ir, s.req.Budget) == nil {
			return ir
		}
		var best *blueprint.IR
		for _, spec := range t.Params {
			if spec.Kind != blueprint.ParamInt {
				continue
			}
			v, _ := ir.Params[spec.Name].(int64)
			for _, nv := range []int64{v / 2, v * 2} {
				if nv < spec.Min || nv > spec.Max || nv == v {
					continue
				}
				p := maps.Clone(ir.Params)
				p[spec.Name] = nv
				c, err := t.Instantiate(p, s.req.Host)
				if err == nil && c.ParamCount+c.FLOPsPerSample < ir.ParamCount+ir.FLOPsPerSample &&
					(best == nil || c.ParamCount+c.FLOPsPerSample < best.ParamCount+best.FLOPsPerSample) {
					best = c
				}
			}
		}
		if best == nil {
			return nil
		}
		ir = best
	}
	return nil
}

func overBudget(ir *blueprint.IR, b blueprint.Budget) error {
	if b.MaxParams > 0 && ir.ParamCount > b.MaxParams {
		return blueprint.ErrOverBudget
	}
	if b.MaxFLOPs > 0 && ir.FLOPsPerSample > b.MaxFLOPs {
		return blueprint.ErrOverBudget
	}
	return nil
}

// better orders entries: higher score first; then the caller's preferred
// template; then more parameters (more capacity within the same budget);
// then template name and parameters, so the order is total.
func better(a, b *entry) bool {
	switch {
	case a.score != b.score:
		return a.score > b.score
	case a.pref != b.pref:
		return a.pref < b.pref
	case a.ir.ParamCount != b.ir.ParamCount:
		return a.ir.ParamCount > b.ir.ParamCount
	case a.ir.Template != b.ir.Template:
		return a.ir.Template < b.ir.Template
	}
	return describe(a.ir.Params) < describe(b.ir.Params)
}

func (s *searcher) rank() {
	sort.SliceStable(s.pool, func(i, j int) bool { return better(s.pool[i], s.pool[j]) })
}

// Prior is the documented ranking used while the predictor is not fitted:
// a candidate scores the mean measured gain of its template on hosts of
// the request's layout in the request's history (0 when it has none);
// ties go to the request's preferred templates (Request.Prefer, in order),
// then to more parameters within the budget. With no history and
// Tamiyo's template first in Prefer, the best candidate is that template
// at the largest size that fits: what the fixed template would grow.
const Prior = "mean measured gain of the template on this layout (0 untried), then preferred template, then size"

// priorGains returns the mean gain of each template over the request's
// trials on hosts of its layout.
func priorGains(r *Request) map[string]float64 {
	sum, n := map[string]float64{}, map[string]int{}
	layout := r.Host.Layout()
	for i := range r.History {
		t := &r.History[i]
		if t.Template == "" || t.Host.Layout() != layout {
			continue
		}
		sum[t.Template] += t.Gain
		n[t.Template]++
	}
	out := make(map[string]float64, len(sum))
	for k, v := range sum {
		out[k] = v / float64(n[k])
	}
	return out
}

// bestTrials returns the history's trials on the request's layout that
// paid (gain > 0), best first, at most historySeeds.
func bestTrials(r *Request) []Trial {
	var out []Trial
	layout := r.Host.Layout()
	for _, t := range r.History {
		if t.Template != "" && t.Gain > 0 && !math.IsNaN(t.Gain) && t.Host.Layout() == layout {
			out = append(out, t)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Gain > out[j].Gain })
	return out[:min(len(out), historySeeds)]
}
