package karn

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Source gives outcome records (an *urza.Store): all runs' when run is "".
type Source interface {
	Outcomes(run string) ([]json.RawMessage, error)
}

// Stats counts a Service's work.
type Stats struct {
	// Requests counts the requests answered; Answered those with at least
	// one candidate; Candidates the candidates returned.
	Requests   int64 `json:"requests"`
	Answered   int64 `json:"answered"`
	Candidates int64 `json:"candidates"`
	// Trials is the number of measured outcome records last read, Fits how
	// many times the predictor was fitted, FittedOn the records of the
	// current fit (0: ranking by the prior).
	Trials   int `json:"trials"`
	Fits     int `json:"fits"`
	FittedOn int `json:"fitted_on"`
	// LastReadError is the last error reading the source ("" none): the
	// search then goes on with the history it had.
	LastReadError string `json:"last_read_error,omitempty"`
	// ReadUS is the wall time of the last read of the source.
	ReadUS int64 `json:"read_us"`
}

// Service answers a training run's requests: it reads the outcome history
// from its Source before each request, refits the predictor when
// RetrainEvery new measured records have arrived since the last fit (or
// for the first time once MinRecords from MinRuns runs are there), and
// adds the history on the request's layout to the request. Not safe for
// concurrent use.
type Service struct {
	src    Source
	trials []Trial
	pred   *Predictor
	why    string
	stats  Stats
}

// NewService returns a service reading history from src (nil: no history;
// ranking by the prior).
func NewService(src Source) *Service {
	return &Service{src: src, why: "no outcome history"}
}

// Refresh reads the source and refits the predictor when due. A read
// error is kept in Stats and returned; the history read before stays.
func (s *Service) Refresh() error {
	if s.src == nil {
		return nil
	}
	start := time.Now()
	recs, err := s.src.Outcomes("")
	if err == nil {
		var trials []Trial
		trials, _, err = TrialsFromOutcomes(recs)
		if err == nil {
			s.trials = trials
		}
	}
	s.stats.ReadUS = time.Since(start).Microseconds()
	if err != nil {
		s.stats.LastReadError = err.Error()
		return fmt.Errorf("karn: read outcome history: %w", err)
	}
	s.stats.LastReadError = ""
	s.stats.Trials = len(s.trials)
	if s.pred == nil || len(s.trials) >= s.stats.FittedOn+RetrainEvery {
		p, err := Fit(s.trials)
		switch {
		case err == nil:
			s.pred = p
			s.stats.Fits++
			s.stats.FittedOn = len(s.trials)
			s.why = fmt.Sprintf("ridge regression fitted on %d measured outcome records from %d runs", p.Records, p.Runs)
		case errors.Is(err, ErrTooFew) && s.pred == nil:
			s.why = err.Error()
		case !errors.Is(err, ErrTooFew):
			return err
		}
	}
	return nil
}

// Answer refreshes the history (a read error is noted, not fatal), adds
// the history's trials to req when it carries none, and searches.
func (s *Service) Answer(req Request) (Answer, error) {
	_ = s.Refresh() // kept in Stats.LastReadError; the search goes on with what it has
	if len(req.History) == 0 {
		req.History = s.History(req)
	}
	ans, err := Search(req, s.pred, s.note())
	if err != nil {
		return Answer{}, err
	}
	s.stats.Requests++
	if len(ans.Candidates) > 0 {
		s.stats.Answered++
	}
	s.stats.Candidates += int64(len(ans.Candidates))
	return ans, nil
}

// History returns the trials read on the request's layout, in the store's
// order, at most MaxHistory (the newest).
func (s *Service) History(req Request) []Trial {
	var out []Trial
	layout := req.Host.Layout()
	for _, t := range s.trials {
		if t.Host.Layout() == layout {
			out = append(out, t)
		}
	}
	if len(out) > MaxHistory {
		out = out[len(out)-MaxHistory:]
	}
	return out
}

// note says what the predictor was fitted on, or why the prior ranks.
func (s *Service) note() string { return s.why }

// Stats returns the service's counters.
func (s *Service) Stats() Stats { return s.stats }

// Predictor returns the fitted predictor, or nil while the prior ranks.
func (s *Service) Predictor() *Predictor { return s.pred }
