package session

import (
	"encoding/json"
	"fmt"

	"github.com/esper-morph/esper/core/urza"
)

// flopCount counts the run's training FLOPs of what Go knows: each wrapped
// layer's own forward (blueprint.Host.ForwardFLOPs of its signature and
// configured params; hosts it cannot count add 0) plus the forward of each
// live seed (GERMINATED to FOSSILIZED, the seeds params_used counts;
// Karn's flops_per_sample of its blueprint), per sample, times the samples
// of each step (samples_per_step of the end-of-epoch metrics, per layer),
// times urza.TrainFLOPsFactor (urza.TrainFLOPs, the estimate of the outcome
// records' spans). Layers that are not wrapped, the optimizer, the loss and
// the extra forwards of evaluation and contribution measurements are not
// counted.
type flopCount struct {
	// host is each layer's forward FLOPs per sample (0: not counted).
	host []int64
	// pending is, per layer, the sum over the steps since the last end of
	// epoch of the layer's forward FLOPs per sample (host and live seeds),
	// but for the last since steps, which ran at perStep.
	pending []int64
	// perStep is each layer's forward FLOPs per sample with the seeds live
	// now; dirty says a seed changed state since it was computed (every
	// transition goes through emitLocked, which sets it).
	perStep []int64
	since   int64
	dirty   bool
	// seedID and seedFLOPs cache each slot's blueprint id and its forward
	// FLOPs per sample: set by germinateLocked from the IR it germinated,
	// read from the seed's blueprint document when they do not name the
	// slot's blueprint (a restored session).
	seedID    []string
	seedFLOPs []int64
	// total is the run's training FLOPs so far.
	total int64
}

// newFLOPCount returns the count of a fresh session of set.
func newFLOPCount(set settings, seeds int) flopCount {
	f := flopCount{host: make([]int64, len(set.hosts)), pending: make([]int64, len(set.hosts)),
		perStep: make([]int64, len(set.hosts)), dirty: true, seedID: make([]string, seeds), seedFLOPs: make([]int64, seeds)}
	for l, h := range set.hosts {
		f.host[l], _ = h.ForwardFLOPs(set.cfg.Layers[l].Params)
	}
	return f
}

// flopsSteppedLocked counts steps steps of every layer's forward as it is
// now (before the steps' automatic transitions). Without a transition
// since the last call it only adds to a counter.
func (s *Session) flopsSteppedLocked(steps int64) {
	if s.flops.dirty {
		s.flopsFlushLocked()
	}
	s.flops.since = satAdd(s.flops.since, steps)
}

// flopsFlushLocked adds the steps counted at perStep to pending and
// recomputes perStep from the seeds live now.
func (s *Session) flopsFlushLocked() {
	f := &s.flops
	for l := range f.pending {
		f.pending[l] = satAdd(f.pending[l], satMul(f.since, f.perStep[l]))
	}
	f.since = 0
	copy(f.perStep, f.host)
	for i, sd := range s.seeds {
		if !sd.State.Live() {
			continue
		}
		if f.seedID[i] != sd.BlueprintID {
			var ir struct {
				FLOPsPerSample int64 `json:"flops_per_sample"`
			}
			// A blueprint the session accepted always decodes; one that
			// did not counts 0.
			_ = json.Unmarshal(sd.Blueprint, &ir)
			f.seedID[i], f.seedFLOPs[i] = sd.BlueprintID, max(ir.FLOPsPerSample, 0)
		}
		f.perStep[sd.Layer] = satAdd(f.perStep[sd.Layer], f.seedFLOPs[i])
	}
	f.dirty = false
}

// pendingNow returns, per layer, the forward FLOPs per sample summed over
// the steps since the last end of epoch (what a snapshot keeps so that a run
// resumed mid-epoch counts the whole epoch). The steps not yet flushed ran
// at perStep: flopsSteppedLocked flushes before counting when seeds changed.
func (f *flopCount) pendingNow() []int64 {
	out := make([]int64, len(f.pending))
	for l := range f.pending {
		out[l] = satAdd(f.pending[l], satMul(f.since, f.perStep[l]))
	}
	return out
}

// flopsEpochLocked adds the epoch's training FLOPs from the layers' samples
// per step (nil: not reported, the epoch adds nothing) and starts the next
// epoch's count.
func (s *Session) flopsEpochLocked(samplesPerStep []int64) {
	s.flopsFlushLocked()
	f := &s.flops
	for l := range f.pending {
		if samplesPerStep != nil {
			f.total = satAdd(f.total, urza.TrainFLOPs(f.pending[l], samplesPerStep[l]))
		}
		f.pending[l] = 0
	}
}

// checkSamplesLocked checks an end-of-epoch samples_per_step.
func (s *Session) checkSamplesLocked(samplesPerStep []int64) error {
	if samplesPerStep == nil {
		return nil
	}
	if len(samplesPerStep) != len(s.set.hosts) {
		return fmt.Errorf("session: end epoch: samples_per_step has %d values, want one per layer (%d): %w",
			len(samplesPerStep), len(s.set.hosts), ErrArgument)
	}
	return nil
}

func satAdd(a, b int64) int64 {
	if c := a + b; c >= a {
		return c
	}
	return 1<<63 - 1
}

func satMul(a, b int64) int64 {
	if a == 0 || b == 0 {
		return 0
	}
	if a > (1<<63-1)/b {
		return 1<<63 - 1
	}
	return a * b
}
