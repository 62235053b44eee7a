package session

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/urza"
)

// outcomeSource is the Urza store Karn reads the outcome history from,
// opened at the first request (a run that never asks never opens it) and
// closed with the session.
type outcomeSource struct {
	root  string
	mu    sync.Mutex
	store *urza.Store
}

// open returns the store, opening it at the first call; o.mu is held.
func (o *outcomeSource) open() (*urza.Store, error) {
	if o.store == nil {
		s, err := urza.Open(o.root, nil)
		if err != nil {
			return nil, fmt.Errorf("session: karn history: %w", err)
		}
		o.store = s
	}
	return o.store, nil
}

// Outcomes returns the store's outcome records (karn.Source).
func (o *outcomeSource) Outcomes(run string) ([]json.RawMessage, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, err := o.open()
	if err != nil {
		return nil, err
	}
	return s.Outcomes(run)
}

// OutcomeFiles lists the store's records (karn.FileSource).
func (o *outcomeSource) OutcomeFiles() ([]urza.OutcomeFile, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, err := o.open()
	if err != nil {
		return nil, err
	}
	return s.OutcomeFiles()
}

// OutcomeRecord reads one record (karn.FileSource).
func (o *outcomeSource) OutcomeRecord(key string) (json.RawMessage, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, err := o.open()
	if err != nil {
		return nil, err
	}
	return s.OutcomeRecord(key)
}

func (o *outcomeSource) close() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.store != nil {
		_ = o.store.Close() // a read-only use: nothing to flush
		o.store = nil
	}
}

// karnService returns the Karn service for a controller with search on,
// reading history from the Urza store at root ("" : none).
func (s *Session) karnService(root string) *karn.Service {
	if s.source != nil {
		s.source.close()
		s.source = nil
	}
	if root == "" {
		return karn.NewService(nil)
	}
	s.source = &outcomeSource{root: root}
	return karn.NewService(s.source)
}

// The session's source lets Karn re-read only new or changed records.
var _ karn.FileSource = (*outcomeSource)(nil)
