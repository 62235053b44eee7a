package karn

import (
	"fmt"
	"math"
	"sort"

	"github.com/esper-morph/esper/core/errcode"
	"gonum.org/v1/gonum/mat"
	"gonum.org/v1/gonum/stat"
)

// Predictor settings.
const (
	// MinRecords is the fewest measured trials the predictor is fitted on;
	// MinRuns the fewest runs they must come from. Below either, Fit
	// refuses and Karn ranks by the prior (Prior).
	MinRecords = 20
	MinRuns    = 3
	// Lambda is the ridge penalty on the standardised features' weights
	// (the intercept is not penalised).
	Lambda = 1.0
	// RetrainEvery is how many new measured trials make a Service refit.
	RetrainEvery = 8
	// EvalFolds is the most folds Evaluate splits the runs into.
	EvalFolds = 5
	// WithinShare is the relative error a prediction counts as accurate
	// within (0.2: within 20% of the measured gain).
	WithinShare = 0.2
)

// Predictor predicts a blueprint's gain (the relative contribution of
// Trial.Gain) from its features: a ridge regression on standardised
// features, fitted on measured trials. Costs are not predicted: Karn
// computes a blueprint's parameters and FLOPs per sample exactly. A fitted
// Predictor is read-only and safe for concurrent use.
type Predictor struct {
	names []string
	mean  []float64
	scale []float64 // 0 for a constant feature (it is left out)
	w     []float64
	b     float64
	// lo and hi bound the gains it was fitted on: predictions are clamped
	// to them (a ridge line extrapolates without end).
	lo, hi float64
	// layouts are the host layouts it has records of.
	layouts map[string]bool
	// Records and Runs say what it was fitted on.
	Records int
	Runs    int
}

// Covers reports whether the predictor was fitted on records of hosts of
// layout; a search on another layout ranks by the prior.
func (p *Predictor) Covers(layout string) bool { return p.layouts[layout] }

// ErrTooFew is returned by Fit when there are too few records or runs.
// [INVALID]
var ErrTooFew = errcode.New(errcode.Invalid, "karn: too few outcome records to fit the predictor")

// Fit fits a predictor on measured trials. With fewer than MinRecords
// trials or MinRuns runs it returns ErrTooFew, saying how many it had.
func Fit(trials []Trial) (*Predictor, error) {
	runs := countRuns(trials)
	if len(trials) < MinRecords || runs < MinRuns {
		return nil, fmt.Errorf("%w: %d measured records from %d runs, %d from %d runs needed",
			ErrTooFew, len(trials), runs, MinRecords, MinRuns)
	}
	return fit(trials, FeatureNames())
}

func countRuns(trials []Trial) int {
	seen := map[string]bool{}
	for i := range trials {
		seen[trials[i].Run] = true
	}
	return len(seen)
}

func fit(trials []Trial, names []string) (*Predictor, error) {
	n, d := len(trials), len(names)
	X := mat.NewDense(n, d, nil)
	y := make([]float64, n)
	row := make([]float64, d)
	for i := range trials {
		s := TrialSample(&trials[i])
		featureVector(names, &s, row)
		X.SetRow(i, row)
		y[i] = trials[i].Gain
	}
	p := &Predictor{names: names, mean: make([]float64, d), scale: make([]float64, d), w: make([]float64, d),
		Records: n, Runs: countRuns(trials), lo: math.Inf(1), hi: math.Inf(-1), layouts: map[string]bool{}}
	for i := range trials {
		p.lo, p.hi = math.Min(p.lo, trials[i].Gain), math.Max(p.hi, trials[i].Gain)
		p.layouts[trials[i].Host.Layout()] = true
	}
	col := make([]float64, n)
	for j := range d {
		mat.Col(col, j, X)
		m, sd := stat.MeanStdDev(col, nil)
		p.mean[j] = m
		if sd > 1e-12 && !math.IsNaN(sd) {
			p.scale[j] = 1 / sd
		}
	}
	for i := range n {
		for j := range d {
			X.Set(i, j, (X.At(i, j)-p.mean[j])*p.scale[j])
		}
	}
	p.b = stat.Mean(y, nil)
	yc := mat.NewVecDense(n, nil)
	for i := range n {
		yc.SetVec(i, y[i]-p.b)
	}
	// (Z'Z + lambda I) w = Z'(y - mean y)
	var A mat.SymDense
	A.SymOuterK(1, X.T())
	for j := range d {
		A.SetSym(j, j, A.At(j, j)+Lambda)
	}
	var rhs mat.VecDense
	rhs.MulVec(X.T(), yc)
	var ch mat.Cholesky
	if ok := ch.Factorize(&A); !ok {
		return nil, fmt.Errorf("karn: predictor: the ridge system is not positive definite")
	}
	var w mat.VecDense
	if err := ch.SolveVecTo(&w, &rhs); err != nil {
		return nil, fmt.Errorf("karn: predictor: solve: %w", err)
	}
	for j := range d {
		p.w[j] = w.AtVec(j)
	}
	return p, nil
}

// Predict returns the predicted gain of a sample, clamped to the range of
// the gains it was fitted on.
func (p *Predictor) Predict(s *Sample) float64 {
	x := make([]float64, len(p.names))
	featureVector(p.names, s, x)
	v := p.b
	for j, xv := range x {
		v += p.w[j] * (xv - p.mean[j]) * p.scale[j]
	}
	return math.Min(p.hi, math.Max(p.lo, v))
}

// Eval is the predictor's error on records it was not fitted on.
type Eval struct {
	// Records and Runs count the measured records evaluated and their
	// runs; Folds is how many groups of runs they were split into (each
	// record is predicted by a predictor fitted on the other folds' runs
	// only).
	Records int `json:"records"`
	Runs    int `json:"runs"`
	Folds   int `json:"folds"`
	// WithinShare is the share of predictions within 20% of the measured
	// gain; MedianRelError the median of |predicted - measured| /
	// |measured|.
	WithinShare    float64 `json:"within_20pct_share"`
	MedianRelError float64 `json:"median_relative_error"`
	// MAE is the mean absolute error in gain units; BaselineMAE the same
	// for predicting the training folds' mean gain (what the features add
	// is the difference).
	MAE         float64 `json:"mae"`
	BaselineMAE float64 `json:"baseline_mae"`
}

// Evaluate measures the predictor's error by runs: the runs are split into
// min(EvalFolds, runs) folds and every record of a fold is predicted by a
// predictor fitted on the other folds only, so no run is both fitted on
// and evaluated. It needs MinRuns runs and MinRecords records (ErrTooFew
// otherwise); a fold whose training part has too few records is left out.
func Evaluate(trials []Trial) (Eval, error) {
	runIDs := map[string]int{}
	for i := range trials {
		runIDs[trials[i].Run] = 0
	}
	if len(trials) < MinRecords || len(runIDs) < MinRuns {
		return Eval{}, fmt.Errorf("%w: %d measured records from %d runs, %d from %d runs needed",
			ErrTooFew, len(trials), len(runIDs), MinRecords, MinRuns)
	}
	ids := make([]string, 0, len(runIDs))
	for id := range runIDs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	folds := min(EvalFolds, len(ids))
	for i, id := range ids {
		runIDs[id] = i % folds
	}
	names := FeatureNames()
	var rel, abs, base []float64
	within, evalRuns := 0, map[string]bool{}
	for f := range folds {
		var train, test []Trial
		for i := range trials {
			if runIDs[trials[i].Run] == f {
				test = append(test, trials[i])
			} else {
				train = append(train, trials[i])
			}
		}
		if len(train) < MinRecords/2 || len(test) == 0 {
			continue
		}
		p, err := fit(train, names)
		if err != nil {
			return Eval{}, err
		}
		for i := range test {
			s := TrialSample(&test[i])
			pred, actual := p.Predict(&s), test[i].Gain
			e := math.Abs(pred - actual)
			abs = append(abs, e)
			base = append(base, math.Abs(p.b-actual))
			r := e / math.Max(math.Abs(actual), 1e-12)
			rel = append(rel, r)
			if r <= WithinShare {
				within++
			}
			evalRuns[test[i].Run] = true
		}
	}
	if len(rel) == 0 {
		return Eval{}, fmt.Errorf("%w: no fold kept %d training records", ErrTooFew, MinRecords/2)
	}
	sort.Float64s(rel)
	return Eval{Records: len(rel), Runs: len(evalRuns), Folds: folds, WithinShare: float64(within) / float64(len(rel)),
		MedianRelError: stat.Quantile(0.5, stat.Empirical, rel, nil), MAE: stat.Mean(abs, nil), BaselineMAE: stat.Mean(base, nil)}, nil
}
