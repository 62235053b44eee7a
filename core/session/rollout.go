package session

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/urza"
)

// Rolling deployment of the learned policy's value model (docs/simic.md,
// "Rolling deployment"): with controller.value_model "urza:<name>", the
// session loads the newest version of <name> published to Urza; at each
// end of epoch it looks for a newer one and switches to it there; when the
// validation loss of one of the next rollout.epochs epochs is worse than
// the last one before the switch by more than rollout.margin (a share of
// it), it goes back to the previous version and refuses the new one for
// the rest of the run. The active version is session state: in the
// snapshot and the state hash, so every rank of a job (which restores rank
// 0's state after each decision) uses the same one.

// UrzaModelPrefix marks a controller.value_model that names a model
// published to Urza ("urza:<name>") rather than a folder.
const UrzaModelPrefix = "urza:"

// Rollout defaults.
const (
	DefaultRolloutMargin = 0.05
	DefaultRolloutEpochs = 2
)

// RolloutConfig sets the rolling deployment's revert rule.
type RolloutConfig struct {
	// Margin is how much worse than before a switch the validation loss
	// may get, as a share of it (0.05: 5%), before the switch is reverted.
	// Default 0.05; >= 0.
	Margin *float64 `json:"margin,omitempty"`
	// Epochs is how many epochs after a switch are watched (K). Default 2,
	// in [1, 1000].
	Epochs int `json:"epochs,omitempty"`
}

// withDefaults fills and checks the rollout settings.
func (r RolloutConfig) withDefaults() (RolloutConfig, error) {
	r.Margin = valueOr(r.Margin, DefaultRolloutMargin)
	if r.Epochs == 0 {
		r.Epochs = DefaultRolloutEpochs
	}
	if m := *r.Margin; math.IsNaN(m) || math.IsInf(m, 0) || m < 0 {
		return r, fmt.Errorf("rollout: margin %v must be finite and >= 0", m)
	}
	if r.Epochs < 1 || r.Epochs > 1000 {
		return r, fmt.Errorf("rollout: epochs %d must be in [1, 1000]", r.Epochs)
	}
	return r, nil
}

// RolloutState is where a rolling deployment stands (in the snapshot).
type RolloutState struct {
	// Name is the model's name in Urza; Active the version in use.
	Name   string `json:"name"`
	Active string `json:"active"`
	// Previous is the version before the last switch ("" for none).
	Previous string `json:"previous,omitempty"`
	// Watching is set during the epochs after a switch; SwitchEpoch is the
	// epoch at whose end it switched and Baseline that epoch's validation
	// loss.
	Watching    bool    `json:"watching,omitempty"`
	SwitchEpoch int     `json:"switch_epoch,omitempty"`
	Baseline    float64 `json:"baseline,omitempty"`
	// Refused are versions reverted (or that failed to load): never
	// switched to again in this run.
	Refused []string `json:"refused,omitempty"`
}

// RolloutEvent is one switch, revert or refusal, as the run log records it
// (LogEntry kind "rollout", Oona kind "policy").
type RolloutEvent struct {
	// Action is "switch", "revert" or "refuse" (a version that does not
	// load: the policy keeps its model).
	Action string `json:"action"`
	// Model is the model's name; From and To the versions before and
	// after (To == From for a refusal, whose Refused names the version).
	Model   string `json:"model"`
	From    string `json:"from"`
	To      string `json:"to"`
	Refused string `json:"refused,omitempty"`
	// Epoch is the epoch at whose end it happened; ValLoss that epoch's
	// validation loss and Baseline the one before the switch (reverts).
	Epoch    int          `json:"epoch"`
	ValLoss  nissa.Metric `json:"val_loss"`
	Baseline float64      `json:"baseline,omitempty"`
	// Reason says why, in words.
	Reason string `json:"reason"`
}

// rollout is a session's rolling deployment: its state and the open store.
type rollout struct {
	st    RolloutState
	store *urza.Store
	cache string
}

// modelCache is where published model versions are materialised as
// folders: $ESPER_HOME/models (ESPER_HOME defaulting to ~/.esper).
func modelCache() (string, error) {
	root, err := urza.DefaultRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(root), "models"), nil
}

// openRollout opens the store of a rolling deployment of name and picks
// the version to load: st's active one when resuming, else the newest.
func openRollout(root, name, cache string, st *RolloutState, prev *rollout) (*rollout, string, error) {
	if err := urza.CheckModelName(name); err != nil {
		return nil, "", fmt.Errorf("value_model %q: %w", UrzaModelPrefix+name, err)
	}
	if root == "" {
		var err error
		if root, err = urza.DefaultRoot(); err != nil {
			return nil, "", err
		}
	}
	if st != nil && st.Name != name {
		return nil, "", fmt.Errorf("value_model %q: the snapshot follows model %q: %w", UrzaModelPrefix+name, st.Name, ErrSnapshot)
	}
	if cache == "" {
		var err error
		if cache, err = modelCache(); err != nil {
			return nil, "", err
		}
	}
	var store *urza.Store
	var err error
	if prev != nil && prev.store.Root() == prev.rootFor(root) {
		store = prev.store // shared until one of the two is dropped (release)
	} else if store, err = urza.Open(root, nil); err != nil {
		return nil, "", fmt.Errorf("value_model %q: %w", UrzaModelPrefix+name, err)
	}
	r := &rollout{store: store, cache: cache, st: RolloutState{Name: name}}
	if st != nil {
		r.st = *st
		r.st.Refused = slices.Clone(st.Refused)
	} else {
		vs, err := store.ModelVersions(name)
		if err != nil {
			r.release(prev)
			return nil, "", fmt.Errorf("value_model %q: %w", UrzaModelPrefix+name, err)
		}
		if len(vs) == 0 {
			r.release(prev)
			return nil, "", fmt.Errorf("value_model %q: no version of %q is published in %s: publish one with `esper simic publish --name %s MODEL_DIR`: %w",
				UrzaModelPrefix+name, name, store.Root(), name, ErrConfig)
		}
		r.st.Active = vs[len(vs)-1].ID
	}
	dir, err := store.ModelFolder(name, r.st.Active, cache)
	if err != nil {
		r.release(prev)
		return nil, "", fmt.Errorf("value_model %q: version %s: %w", UrzaModelPrefix+name, r.st.Active, err)
	}
	return r, dir, nil
}

// rootFor returns the root a store opened at root reports.
func (r *rollout) rootFor(root string) string {
	if abs, err := filepath.Abs(root); err == nil && !strings.Contains(root, "://") {
		return abs
	}
	return root
}

// close closes the store.
func (r *rollout) close() {
	if r != nil && r.store != nil {
		r.store.Close()
	}
}

// release drops r, closing its store unless keep shares it.
func (r *rollout) release(keep *rollout) {
	if r == nil || r == keep || (keep != nil && keep.store == r.store) {
		return
	}
	r.close()
}

// rolloutLocked runs the rolling deployment's rule at the end of epoch,
// whose validation loss is val: revert a switch that made it worse by more
// than the margin, end the watch after rollout.epochs epochs, and switch
// to a newer published version when none is being watched. Every change is
// recorded in the growth log (and so the run log and Oona).
func (s *Session) rolloutLocked(epoch int, val nissa.Metric) []RolloutEvent {
	r := s.roll
	if r == nil {
		return nil
	}
	st := &r.st
	cfg := s.set.cfg.Rollout
	if st.Watching {
		limit := st.Baseline + *cfg.Margin*math.Abs(st.Baseline)
		// Not reported: no judgement (the watch still ends after K epochs);
		// reported but NaN or infinite: worse.
		worse := val.Measured && (!val.Finite() || val.Value > limit)
		if worse && st.Previous != "" {
			from, to := st.Active, st.Previous
			reason := fmt.Sprintf("validation loss %s at epoch %d is worse than %.6g before the switch at epoch %d by more than the margin %.4g (limit %.6g): back to the previous version",
				metricText(val), epoch, st.Baseline, st.SwitchEpoch, *cfg.Margin, limit)
			if err := s.useModelLocked(to); err != nil {
				reason += fmt.Sprintf("; the previous version did not load (%v): the new one stays", err)
				to = from
			}
			st.Refused = append(st.Refused, from)
			st.Active, st.Previous, st.Watching = to, "", false
			return s.rolloutEventLocked(RolloutEvent{Action: "revert", Model: st.Name, From: from, To: to, Epoch: epoch,
				ValLoss: val, Baseline: st.Baseline, Reason: reason})
		}
		if epoch-st.SwitchEpoch >= cfg.Epochs {
			st.Watching = false
		} else {
			return nil
		}
	}
	if !val.Finite() {
		return nil // a switch needs a baseline
	}
	vs, err := r.store.ModelVersions(st.Name)
	if err != nil || len(vs) == 0 {
		return nil // the store is unreachable: keep the model, look again next epoch
	}
	newest := vs[len(vs)-1].ID
	if newest == st.Active || slices.Contains(st.Refused, newest) {
		return nil
	}
	if err := s.useModelLocked(newest); err != nil {
		st.Refused = append(st.Refused, newest)
		return s.rolloutEventLocked(RolloutEvent{Action: "refuse", Model: st.Name, From: st.Active, To: st.Active, Refused: newest,
			Epoch: epoch, ValLoss: val, Reason: fmt.Sprintf("version %s does not load: %v: the policy keeps version %s", short(newest), err, short(st.Active))})
	}
	from := st.Active
	st.Active, st.Previous, st.Watching, st.SwitchEpoch, st.Baseline = newest, from, true, epoch, val.Value
	return s.rolloutEventLocked(RolloutEvent{Action: "switch", Model: st.Name, From: from, To: newest, Epoch: epoch, ValLoss: val,
		Baseline: val.Value, Reason: fmt.Sprintf("version %s is the newest published: switched at the end of epoch %d (validation loss %.6g); watched for %d epochs, reverted if worse by more than %.4g",
			short(newest), epoch, val.Value, cfg.Epochs, *cfg.Margin)})
}

// useModelLocked loads version id into the controller.
func (s *Session) useModelLocked(id string) error {
	dir, err := s.roll.store.ModelFolder(s.roll.st.Name, id, s.roll.cache)
	if err != nil {
		return err
	}
	return s.ctl.SetValueModel(dir)
}

// rolloutEventLocked records ev in the growth log and returns it (for
// the epoch's result).
func (s *Session) rolloutEventLocked(ev RolloutEvent) []RolloutEvent {
	e := ev
	s.recordLocked(LogEntry{Kind: "rollout", Step: s.step, Epoch: ev.Epoch, Rollout: &e}, "rollout", &e)
	return []RolloutEvent{ev}
}

// rolloutStateLocked returns the rolling deployment's state (nil without
// one), as the state hash covers it.
func (s *Session) rolloutStateLocked() *RolloutState {
	if s.roll == nil {
		return nil
	}
	st := s.roll.st
	return &st
}

// rolloutSummaryLocked says which version is active, for a state hash
// difference.
func (s *Session) rolloutSummaryLocked() string {
	if s.roll == nil {
		return "no rolling deployment"
	}
	return fmt.Sprintf("model %s version %s active (previous %q, watching %v)", s.roll.st.Name, short(s.roll.st.Active),
		short(s.roll.st.Previous), s.roll.st.Watching)
}

// metricText shows a validation loss ("not finite" when it is not).
func metricText(m nissa.Metric) string {
	if !m.Finite() {
		return fmt.Sprintf("%v (not finite)", m.Value)
	}
	return fmt.Sprintf("%.6g", m.Value)
}

// short is an id's first 12 digits.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// urzaModelName returns the model name of a value_model "urza:<name>".
func urzaModelName(valueModel string) (string, bool) {
	return strings.CutPrefix(valueModel, UrzaModelPrefix)
}

// Rollout returns the rolling deployment's state (false without one).
func (s *Session) Rollout() (RolloutState, bool, error) {
	if err := s.lock(); err != nil {
		return RolloutState{}, false, err
	}
	defer s.unlock()
	if s.roll == nil {
		return RolloutState{}, false, nil
	}
	st := s.roll.st
	st.Refused = slices.Clone(st.Refused)
	return st, true, nil
}
