package session

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	"github.com/esper-morph/esper/blueprint/karn"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/urza"
)

// Rolling deployment of a model published to Urza (docs/simic.md and
// docs/karn.md, "Rolling deployment"): with controller.value_model or
// karn_predictor "urza:<name>", the session loads the newest version of
// <name> published to Urza; at each end of epoch it looks for a newer one
// and switches to it there; when the validation loss of one of the next
// rollout.epochs epochs is worse than the last one before the switch by
// more than rollout.margin (a share of it), it goes back to the previous
// version and refuses the new one for the rest of the run. One rule for
// every artifact kind (artifactKind says how a version is put to use);
// each kind has its own watch. The active versions are session state: in
// the snapshot and the state hash, so every rank of a job (which restores
// rank 0's state after each decision) uses the same ones.

// Artifact kinds a rolling deployment deploys (RolloutState.Kind,
// RolloutEvent.Artifact): the learned policy's value model and Karn's
// predictor, named after the settings that follow them.
const (
	ArtifactValueModel    = "value_model"
	ArtifactKarnPredictor = "karn_predictor"
)

// artifactKind says how versions of one kind of model are used.
type artifactKind struct {
	// key is the kind (Artifact*), the setting's name.
	key string
	// publish is the command that publishes a version, with %s for the name.
	publish string
	// use puts the version id of model name, materialised in dir, to use.
	use func(s *Session, name, id, dir string) error
}

// artifactKinds are the kinds, in the order a session opens and judges them.
func artifactKinds() []artifactKind {
	return []artifactKind{
		{key: ArtifactValueModel, publish: "esper simic publish --name %s MODEL_DIR",
			use: func(s *Session, _, _, dir string) error { return s.ctl.SetValueModel(dir) }},
		{key: ArtifactKarnPredictor, publish: "esper karn publish --name %s PREDICTOR_DIR",
			use: func(s *Session, name, id, dir string) error {
				p, err := karn.LoadPredictor(dir)
				if err != nil {
					return err
				}
				if k := s.ctl.Karn(); k != nil {
					k.UsePredictor(p, predictorNote(name, id, p))
				}
				return nil
			}},
	}
}

// kindOf returns the artifact kind called key.
func kindOf(key string) (artifactKind, bool) {
	for _, k := range artifactKinds() {
		if k.key == key {
			return k, true
		}
	}
	return artifactKind{}, false
}

// predictorNote names a published predictor in Karn's answers.
func predictorNote(name, id string, p *karn.Predictor) string {
	return fmt.Sprintf("predictor %s version %s (ridge regression fitted on %d measured outcome records from %d runs)",
		name, short(id), p.Records, p.Runs)
}

// UrzaModelPrefix marks a controller.value_model or karn_predictor that
// names a model published to Urza ("urza:<name>") rather than a folder.
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
	// Kind is the artifact kind (ArtifactValueModel, ArtifactKarnPredictor;
	// "" in older snapshots: the value model).
	Kind string `json:"kind,omitempty"`
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
	// load: the run keeps its version).
	Action string `json:"action"`
	// Artifact is the artifact kind (ArtifactValueModel,
	// ArtifactKarnPredictor).
	Artifact string `json:"artifact"`
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
	kind  artifactKind
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

// openRollout opens the store of a rolling deployment of name, of kind,
// and picks the version to load: st's active one when resuming, else the
// newest. It returns the folder the version is materialised in.
func openRollout(kind artifactKind, root, name, cache string, st *RolloutState, prev *rollout) (*rollout, string, error) {
	what := fmt.Sprintf("%s %q", kind.key, UrzaModelPrefix+name)
	if err := urza.CheckModelName(name); err != nil {
		return nil, "", fmt.Errorf("%s: %w", what, err)
	}
	if root == "" {
		var err error
		if root, err = urza.DefaultRoot(); err != nil {
			return nil, "", err
		}
	}
	if st != nil && st.Name != name {
		return nil, "", fmt.Errorf("%s: the snapshot follows model %q: %w", what, st.Name, ErrSnapshot)
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
		return nil, "", fmt.Errorf("%s: %w", what, err)
	}
	r := &rollout{kind: kind, store: store, cache: cache, st: RolloutState{Kind: kind.key, Name: name}}
	if st != nil {
		r.st = *st
		r.st.Kind = kind.key
		r.st.Refused = slices.Clone(st.Refused)
	} else {
		vs, err := store.ModelVersions(name)
		if err != nil {
			r.release(prev)
			return nil, "", fmt.Errorf("%s: %w", what, err)
		}
		if len(vs) == 0 {
			r.release(prev)
			return nil, "", fmt.Errorf("%s: no version of %q is published in %s: publish one with `"+kind.publish+"`: %w",
				what, name, store.Root(), name, ErrConfig)
		}
		r.st.Active = vs[len(vs)-1].ID
	}
	dir, err := store.ModelFolder(name, r.st.Active, cache)
	if err != nil {
		r.release(prev)
		return nil, "", fmt.Errorf("%s: version %s: %w", what, r.st.Active, err)
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

// rolloutLocked runs the rolling deployments' rule at the end of epoch,
// whose validation loss is val, for each kind in turn (rollOneLocked), and
// returns what changed.
func (s *Session) rolloutLocked(epoch int, val nissa.Metric) []RolloutEvent {
	var out []RolloutEvent
	for _, r := range s.rolls {
		if ev, ok := s.rollOneLocked(r, epoch, val); ok {
			s.recordLocked(LogEntry{Kind: "rollout", Step: s.step, Epoch: ev.Epoch, Rollout: &ev}, "rollout", &ev)
			out = append(out, ev)
		}
	}
	return out
}

// rollOneLocked is the rule for one deployment: revert a switch that made
// the validation loss worse than before it by more than the margin, end
// the watch after rollout.epochs epochs, and switch to a newer published
// version when none is being watched. It returns the change, if any.
func (s *Session) rollOneLocked(r *rollout, epoch int, val nissa.Metric) (RolloutEvent, bool) {
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
			if err := s.useVersionLocked(r, to); err != nil {
				reason += fmt.Sprintf("; the previous version did not load (%v): the new one stays", err)
				to = from
			}
			st.Refused = append(st.Refused, from)
			st.Active, st.Previous, st.Watching = to, "", false
			return RolloutEvent{Action: "revert", Artifact: r.kind.key, Model: st.Name, From: from, To: to, Epoch: epoch,
				ValLoss: val, Baseline: st.Baseline, Reason: reason}, true
		}
		if epoch-st.SwitchEpoch >= cfg.Epochs {
			st.Watching = false
		} else {
			return RolloutEvent{}, false
		}
	}
	if !val.Finite() {
		return RolloutEvent{}, false // a switch needs a baseline
	}
	vs, err := r.store.ModelVersions(st.Name)
	if err != nil || len(vs) == 0 {
		return RolloutEvent{}, false // the store is unreachable: keep the version, look again next epoch
	}
	newest := vs[len(vs)-1].ID
	if newest == st.Active || slices.Contains(st.Refused, newest) {
		return RolloutEvent{}, false
	}
	if err := s.useVersionLocked(r, newest); err != nil {
		st.Refused = append(st.Refused, newest)
		return RolloutEvent{Action: "refuse", Artifact: r.kind.key, Model: st.Name, From: st.Active, To: st.Active, Refused: newest,
			Epoch: epoch, ValLoss: val, Reason: fmt.Sprintf("version %s does not load: %v: the run keeps version %s", short(newest), err, short(st.Active))}, true
	}
	from := st.Active
	st.Active, st.Previous, st.Watching, st.SwitchEpoch, st.Baseline = newest, from, true, epoch, val.Value
	return RolloutEvent{Action: "switch", Artifact: r.kind.key, Model: st.Name, From: from, To: newest, Epoch: epoch, ValLoss: val,
		Baseline: val.Value, Reason: fmt.Sprintf("%s version %s is the newest published: switched at the end of epoch %d (validation loss %.6g); watched for %d epochs, reverted if worse by more than %.4g",
			r.kind.key, short(newest), epoch, val.Value, cfg.Epochs, *cfg.Margin)}, true
}

// useVersionLocked materialises version id of r's model and puts it to use.
func (s *Session) useVersionLocked(r *rollout, id string) error {
	dir, err := r.store.ModelFolder(r.st.Name, id, r.cache)
	if err != nil {
		return err
	}
	return r.kind.use(s, r.st.Name, id, dir)
}

// rolloutStatesLocked returns the rolling deployments' states, in kind
// order (nil without one), as the snapshot and the state hash hold them.
func (s *Session) rolloutStatesLocked() []RolloutState {
	if len(s.rolls) == 0 {
		return nil
	}
	out := make([]RolloutState, len(s.rolls))
	for i, r := range s.rolls {
		out[i] = r.st
		out[i].Refused = slices.Clone(r.st.Refused)
	}
	return out
}

// rolloutSummaryLocked says which versions are active, for a state hash
// difference.
func (s *Session) rolloutSummaryLocked() string {
	if len(s.rolls) == 0 {
		return "no rolling deployment"
	}
	parts := make([]string, len(s.rolls))
	for i, r := range s.rolls {
		parts[i] = fmt.Sprintf("%s %s version %s active (previous %q, watching %v)", r.kind.key, r.st.Name, short(r.st.Active),
			short(r.st.Previous), r.st.Watching)
	}
	return strings.Join(parts, "; ")
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

// urzaModelName returns the model name of a setting "urza:<name>".
func urzaModelName(setting string) (string, bool) {
	return strings.CutPrefix(setting, UrzaModelPrefix)
}

// Rollouts returns the rolling deployments' states, one per kind followed
// (none: an empty list).
func (s *Session) Rollouts() ([]RolloutState, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.unlock()
	out := s.rolloutStatesLocked()
	if out == nil {
		out = []RolloutState{}
	}
	return out, nil
}

// Rollout returns the rolling deployment of kind (false without one).
func (s *Session) Rollout(kind string) (RolloutState, bool, error) {
	states, err := s.Rollouts()
	if err != nil {
		return RolloutState{}, false, err
	}
	for _, st := range states {
		if st.Kind == kind {
			return st, true, nil
		}
	}
	return RolloutState{}, false, nil
}

// rollFor returns the rollout of kind among rolls (nil: none).
func rollFor(rolls []*rollout, kind string) *rollout {
	for _, r := range rolls {
		if r.kind.key == kind {
			return r
		}
	}
	return nil
}

// stateFor returns the state of kind among states (nil: none).
func stateFor(states []RolloutState, kind string) *RolloutState {
	for i := range states {
		if states[i].Kind == kind || states[i].Kind == "" && kind == ArtifactValueModel {
			return &states[i]
		}
	}
	return nil
}

// closeRolls closes the stores of rolls.
func closeRolls(rolls []*rollout) {
	for _, r := range rolls {
		r.close()
	}
}

// releaseRolls drops rolls, closing each store that keep does not share.
func releaseRolls(rolls, keep []*rollout) {
	for _, r := range rolls {
		r.release(rollFor(keep, r.kind.key))
	}
}
