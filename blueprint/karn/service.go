package karn

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/esper-morph/esper/core/urza"
)

// Source gives outcome records (an *urza.Store): all runs' when run is "".
type Source interface {
	Outcomes(run string) ([]json.RawMessage, error)
}

// FileSource is a Source that also lists its records with their sizes and
// modification times and reads one by key (an *urza.Store does): a Service
// then re-reads only the records written since its last read.
type FileSource interface {
	Source
	OutcomeFiles() ([]urza.OutcomeFile, error)
	OutcomeRecord(key string) (json.RawMessage, error)
}

// cached is a record as last read: its file's size and time, and its trial
// (nil when it measured nothing).
type cached struct {
	size  int64
	mod   time.Time
	trial *Trial
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
	cache  map[string]cached
	trials []Trial
	pred   *Predictor
	why    string
	stats  Stats
	// fixed is set by UsePredictor: the predictor is not refitted.
	fixed bool
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
	var err error
	if fs, ok := s.src.(FileSource); ok {
		err = s.readFiles(fs)
	} else {
		var recs []json.RawMessage
		if recs, err = s.src.Outcomes(""); err == nil {
			var trials []Trial
			if trials, _, err = TrialsFromOutcomes(recs); err == nil {
				s.trials = trials
			}
		}
	}
	s.stats.ReadUS = time.Since(start).Microseconds()
	if err != nil {
		s.stats.LastReadError = err.Error()
		return fmt.Errorf("karn: read outcome history: %w", err)
	}
	s.stats.LastReadError = ""
	s.stats.Trials = len(s.trials)
	if s.fixed {
		return nil
	}
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

// readFiles lists the source's records and decodes those new or changed
// since the last read, keeping the rest as they were decoded.
func (s *Service) readFiles(src FileSource) error {
	files, err := src.OutcomeFiles()
	if err != nil {
		return err
	}
	next := make(map[string]cached, len(files))
	var trials []Trial
	for _, f := range files {
		c, ok := s.cache[f.Key]
		if !ok || c.size != f.Size || !c.mod.Equal(f.ModTime) {
			rec, err := src.OutcomeRecord(f.Key)
			if errors.Is(err, urza.ErrNotFound) {
				continue // removed since the listing
			}
			if err != nil {
				return err
			}
			t, measured, err := TrialFromOutcome(rec)
			if err != nil {
				return fmt.Errorf("outcome %s: %w", f.Key, err)
			}
			c = cached{size: f.Size, mod: f.ModTime}
			if measured {
				c.trial = &t
			}
		}
		next[f.Key] = c
		if c.trial != nil {
			trials = append(trials, *c.trial)
		}
	}
	s.cache, s.trials = next, trials
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

// UsePredictor makes the service rank with p, a published predictor
// (LoadPredictor), from now on, and never refit it; note says which
// predictor it is (a decision's reason shows it). The history is still read
// for the requests' trials.
func (s *Service) UsePredictor(p *Predictor, note string) {
	s.pred, s.fixed, s.why = p, true, note
	s.stats.FittedOn = p.Records
}

// Stats returns the service's counters.
func (s *Service) Stats() Stats { return s.stats }

// Predictor returns the fitted predictor, or nil while the prior ranks.
func (s *Service) Predictor() *Predictor { return s.pred }
