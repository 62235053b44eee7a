package urza

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
)

// Experience records: one per episode of a policy trainer (Simic's PPO,
// python/esper/simic/ppo.py), written as the episode completes. They hold
// what the trainer learned from (the policy's steps: graph, action,
// log-probability, value) with the episode's figures, and link to the
// outcome records of the episode's runs by their run ids (docs/simic.md,
// "Experience in Urza").
//
// Layout under the root:
//
//	experience/<trainer_run>/<mode>-<episode>.json
//
// with the episode number in nine digits. mode is "policy" (a PPO episode:
// the policy's run and its paired heuristic baseline) or "heuristic" (a
// heuristic run imitated by behaviour cloning). Each record is written
// atomically (temp file, fsync, rename, fsync dir; on S3 one PUT) in
// canonical JSON; its name is derived here from its fields. Writing the same
// (mode, episode) of a trainer run again replaces the record: a trainer that
// resumes from a checkpoint older than its last stored episodes runs those
// episodes again and their records are replaced, never duplicated.

// ExperienceSchema is the version of the experience record format. A record
// with schema 0 (absent) is stamped with it; any other value is refused.
const ExperienceSchema = 1

// MaxExperienceBytes bounds one experience record (a graph document of a
// small model is about 7 KB; an episode of 15 epochs holds up to 45 steps).
const MaxExperienceBytes = 16 << 20

const experienceDir = "experience"

// ExperienceModes are the episode kinds, in the order a trainer runs them
// (behaviour cloning's heuristic runs, then PPO's episodes) and Experience
// returns them.
var ExperienceModes = []string{"heuristic", "policy"}

// ErrInvalidExperience is returned by PutExperience for a record that is
// malformed or lacks a required field. [INVALID]
var ErrInvalidExperience = errcode.New(errcode.Invalid, "invalid experience record")

// EpisodeSpec is the episode's task: task Index of the training family
// Family, with split, initialisation and controller seed Seed, for Epochs
// epochs, on the quick version of the task when Quick.
type EpisodeSpec struct {
	Family string `json:"family"`
	Index  int    `json:"index"`
	Seed   int64  `json:"seed"`
	Epochs int    `json:"epochs"`
	Quick  bool   `json:"quick"`
}

// EpisodeRun is one training run of an episode and its figures.
type EpisodeRun struct {
	// RunID is the run's Morphogenesis run id: its outcome records are
	// outcomes/<run_id>/ of the same store. A baseline run by a trainer
	// that did not record run ids has none (optional there only).
	RunID string `json:"run_id,omitempty"`
	// Metric is the validation metric at the chosen epoch, FLOPs the
	// run's training FLOPs, Params the parameters at the chosen epoch.
	Metric float64 `json:"metric"`
	FLOPs  float64 `json:"flops"`
	Params int64   `json:"params"`
	// The run's Tamiyo counters.
	Proposals      int64 `json:"proposals"`
	Refused        int64 `json:"refused"`
	Germinations   int64 `json:"germinations"`
	Fossilizations int64 `json:"fossilizations"`
	Rollbacks      int64 `json:"rollbacks"`
	// Wall is the run's wall time in seconds.
	Wall float64 `json:"wall"`
}

// Reward is a PPO episode's reward and its terms (policy run minus
// baseline, at the trainer's prices); Total is the sum of the four terms.
type Reward struct {
	Accuracy  float64 `json:"accuracy"`
	Compute   float64 `json:"compute"`
	Params    float64 `json:"params"`
	Stability float64 `json:"stability"`
	Total     float64 `json:"total"`
}

// Action is a move of the graph policy's move space: the op index, and the
// target slot, template and size indices (-1 where the op has none).
type Action struct {
	Op       int `json:"op"`
	Target   int `json:"target"`
	Template int `json:"template"`
	Size     int `json:"size"`
}

// ExperienceStep is one decision of an episode: the graph document the
// decider saw (as Go produced it, esper_session_graph) and the action. A
// policy episode's step also has the action's log-probability, the value
// estimate and whether Go applied the move; a heuristic run's has none.
type ExperienceStep struct {
	Graph   json.RawMessage `json:"graph"`
	Action  Action          `json:"action"`
	LogProb *float64        `json:"log_prob,omitempty"`
	Value   *float64        `json:"value,omitempty"`
	Applied *bool           `json:"applied,omitempty"`
}

// PolicyCheckpoint identifies the policy weights a policy episode ran with:
// the trainer's episode count when they were taken and the SHA-256 of the
// weights (as safetensors, the bytes of the trainer's model folder).
type PolicyCheckpoint struct {
	Episodes      int64  `json:"episodes"`
	WeightsSHA256 string `json:"weights_sha256"`
}

// Experience is one episode's record. Every field is required unless
// marked optional.
type Experience struct {
	Schema int `json:"schema"`
	// TrainerRun names the trainer's run (kept in its checkpoint);
	// Episode numbers the trainer's episodes of Mode from 1.
	TrainerRun string      `json:"trainer_run"`
	Episode    int64       `json:"episode"`
	Mode       string      `json:"mode"`
	Spec       EpisodeSpec `json:"spec"`
	// Run is the run that decided (the policy's run, or the heuristic's).
	Run EpisodeRun `json:"run"`
	// Baseline, Reward and Checkpoint: mode "policy" only (required there).
	Baseline   *EpisodeRun       `json:"baseline,omitempty"`
	Reward     *Reward           `json:"reward,omitempty"`
	Checkpoint *PolicyCheckpoint `json:"checkpoint,omitempty"`
	// Steps are the decisions in order (possibly none).
	Steps []ExperienceStep `json:"steps"`
	// Written is when the store wrote the record (filled here).
	Written time.Time `json:"written"`
}

// ParseExperience decodes and validates a record as PutExperience receives
// it (strictly: unknown fields, duplicate keys, trailing data and missing or
// null required fields are refused). Errors wrap ErrInvalidExperience and
// name the field.
func ParseExperience(data []byte) (*Experience, error) {
	if len(data) > MaxExperienceBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidExperience, len(data), MaxExperienceBytes)
	}
	var e Experience
	if err := canon.DecodeStrict(data, &e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidExperience, err)
	}
	if err := requireFields(data); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidExperience, err)
	}
	if err := e.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidExperience, err)
	}
	return &e, nil
}

// Required keys of each object of a record (the decoder alone would take a
// missing or null number for 0).
var (
	experienceKeys = []string{"trainer_run", "episode", "mode", "spec", "run", "steps"}
	specKeys       = []string{"family", "index", "seed", "epochs", "quick"}
	runKeys        = []string{"metric", "flops", "params", "proposals", "refused", "germinations", "fossilizations", "rollbacks", "wall"}
	rewardKeys     = []string{"accuracy", "compute", "params", "stability", "total"}
	checkpointKeys = []string{"episodes", "weights_sha256"}
	stepKeys       = []string{"graph", "action"}
	actionKeys     = []string{"op", "target", "template", "size"}
)

// requireFields checks that every required key is present and not null,
// naming the first that is not by its path ("steps[3].action.op").
func requireFields(data []byte) error {
	top, err := fields("", data, experienceKeys)
	if err != nil {
		return err
	}
	objects := map[string][]string{"spec": specKeys, "run": runKeys, "baseline": runKeys, "reward": rewardKeys, "checkpoint": checkpointKeys}
	for _, name := range []string{"spec", "run", "baseline", "reward", "checkpoint"} {
		if raw, ok := top[name]; ok && !isNull(raw) {
			if _, err := fields(name, raw, objects[name]); err != nil {
				return err
			}
		}
	}
	var steps []json.RawMessage
	if err := json.Unmarshal(top["steps"], &steps); err != nil {
		return fmt.Errorf("steps must be an array")
	}
	for i, raw := range steps {
		at := fmt.Sprintf("steps[%d]", i)
		step, err := fields(at, raw, stepKeys)
		if err != nil {
			return err
		}
		if _, err := fields(at+".action", step["action"], actionKeys); err != nil {
			return err
		}
	}
	return nil
}

// fields decodes an object and checks that keys are present and not null.
func fields(at string, raw json.RawMessage, keys []string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, fmt.Errorf("%s must be a JSON object", orRecord(at))
	}
	for _, k := range keys {
		if v, ok := m[k]; !ok || isNull(v) {
			if at == "" {
				return nil, fmt.Errorf("%s is required", k)
			}
			return nil, fmt.Errorf("%s.%s is required", at, k)
		}
	}
	return m, nil
}

func orRecord(at string) string {
	if at == "" {
		return "the record"
	}
	return at
}

func finite(xs ...float64) bool {
	for _, x := range xs {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return false
		}
	}
	return true
}

func (e *Experience) check() error {
	switch e.Schema {
	case 0:
		e.Schema = ExperienceSchema
	case ExperienceSchema:
	default:
		return fmt.Errorf("schema %d is not %d (this library writes version %d)", e.Schema, ExperienceSchema, ExperienceSchema)
	}
	if !validRunID(e.TrainerRun) {
		return fmt.Errorf("trainer_run %q must be 1 to %d characters of [a-z0-9_:.-], not starting with '.'", e.TrainerRun, maxRunIDLen)
	}
	if e.Episode < 1 || e.Episode > 999_999_999 {
		return fmt.Errorf("episode %d must be 1 to 999999999", e.Episode)
	}
	if !slices.Contains(ExperienceModes, e.Mode) {
		return fmt.Errorf("mode %q is not one of %s", e.Mode, strings.Join(ExperienceModes, ", "))
	}
	sp := e.Spec
	if sp.Family == "" || sp.Index < 0 || sp.Epochs < 1 {
		return fmt.Errorf("spec: family %q must be named, index %d >= 0 and epochs %d >= 1", sp.Family, sp.Index, sp.Epochs)
	}
	if err := e.Run.check("run", true); err != nil {
		return err
	}
	policy := e.Mode == "policy"
	for _, f := range []struct {
		name    string
		present bool
	}{{"baseline", e.Baseline != nil}, {"reward", e.Reward != nil}, {"checkpoint", e.Checkpoint != nil}} {
		if f.present != policy {
			if policy {
				return fmt.Errorf("%s is required in mode policy", f.name)
			}
			return fmt.Errorf("%s is for mode policy only, not %s", f.name, e.Mode)
		}
	}
	if policy {
		if err := e.Baseline.check("baseline", false); err != nil {
			return err
		}
		r := e.Reward
		if !finite(r.Accuracy, r.Compute, r.Params, r.Stability, r.Total) {
			return fmt.Errorf("reward: every term must be a finite number")
		}
		sum := r.Accuracy + r.Compute + r.Params + r.Stability
		if math.Abs(r.Total-sum) > 1e-9*max(1, math.Abs(sum)) {
			return fmt.Errorf("reward.total %v is not the sum of its terms (%v)", r.Total, sum)
		}
		if e.Checkpoint.Episodes < 0 || !canon.IsID(e.Checkpoint.WeightsSHA256) {
			return fmt.Errorf("checkpoint: episodes %d must be >= 0 and weights_sha256 %q 64 lowercase hex digits",
				e.Checkpoint.Episodes, e.Checkpoint.WeightsSHA256)
		}
	}
	if e.Steps == nil {
		e.Steps = []ExperienceStep{}
	}
	for i := range e.Steps {
		if err := e.Steps[i].check(i, policy); err != nil {
			return err
		}
	}
	return nil
}

func (r *EpisodeRun) check(name string, needID bool) error {
	if (needID || r.RunID != "") && !validRunID(r.RunID) {
		return fmt.Errorf("%s.run_id %q must be 1 to %d characters of [a-z0-9_:.-], not starting with '.'", name, r.RunID, maxRunIDLen)
	}
	if !finite(r.Metric, r.FLOPs, r.Wall) || r.FLOPs < 0 || r.Wall < 0 {
		return fmt.Errorf("%s: metric %v must be finite, flops %v and wall %v finite and >= 0", name, r.Metric, r.FLOPs, r.Wall)
	}
	for _, c := range []struct {
		field string
		n     int64
	}{{"params", r.Params}, {"proposals", r.Proposals}, {"refused", r.Refused}, {"germinations", r.Germinations},
		{"fossilizations", r.Fossilizations}, {"rollbacks", r.Rollbacks}} {
		if c.n < 0 {
			return fmt.Errorf("%s.%s %d must be >= 0", name, c.field, c.n)
		}
	}
	return nil
}

func (s *ExperienceStep) check(i int, policy bool) error {
	if b := bytes.TrimSpace(s.Graph); len(b) == 0 || b[0] != '{' {
		return fmt.Errorf("steps[%d].graph must be a JSON object (the graph document)", i)
	}
	a := s.Action
	if a.Op < 0 || a.Target < -1 || a.Template < -1 || a.Size < -1 {
		return fmt.Errorf("steps[%d].action: op %d must be >= 0, target %d, template %d and size %d >= -1", i, a.Op, a.Target, a.Template, a.Size)
	}
	if !policy {
		if s.LogProb != nil || s.Value != nil || s.Applied != nil {
			return fmt.Errorf("steps[%d]: log_prob, value and applied are for mode policy only", i)
		}
		return nil
	}
	switch {
	case s.LogProb == nil:
		return fmt.Errorf("steps[%d].log_prob is required in mode policy", i)
	case s.Value == nil:
		return fmt.Errorf("steps[%d].value is required in mode policy", i)
	case s.Applied == nil:
		return fmt.Errorf("steps[%d].applied is required in mode policy", i)
	case !finite(*s.LogProb) || *s.LogProb > 0:
		return fmt.Errorf("steps[%d].log_prob %v must be a finite number <= 0", i, *s.LogProb)
	case !finite(*s.Value):
		return fmt.Errorf("steps[%d].value %v must be a finite number", i, *s.Value)
	}
	return nil
}

// Name is the record's file name in its trainer run's folder.
func (e *Experience) Name() string { return fmt.Sprintf("%s-%09d", e.Mode, e.Episode) }
