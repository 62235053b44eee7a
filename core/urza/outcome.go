package urza

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/errcode"
	"github.com/esper-morph/esper/core/recovery"
)

// Outcome records: one per germination of a training run, written when the
// germination ends (fossilized, pruned, cancelled, rolled back, or the run
// ended with it in flight). They are the training data of learned policies
// (docs/internals.md, "Outcome records").
//
// Layout under the root:
//
//	outcomes/<run>/<germinated_step>-<layer>-<slot>-<seq>.json
//
// Each record is written atomically (temp file, fsync, rename, fsync dir)
// in canonical JSON. Its name is derived here from its fields, never taken
// from the caller, so a record cannot escape its run's folder. Writing a
// record with the same name again replaces it (a resumed run that ends the
// same germination again writes the same record).

// OutcomeSchema is the version of the outcome record format. A record with
// schema 0 (absent) is stamped with it; any other value is refused.
const OutcomeSchema = 1

// MaxOutcomeBytes bounds one outcome record.
const MaxOutcomeBytes = 1 << 20

const (
	outcomesDir = "outcomes"
	maxRunIDLen = 64
)

// ErrInvalidOutcome is returned by PutOutcome for a record that is
// malformed or lacks a required field. [INVALID]
var ErrInvalidOutcome = errcode.New(errcode.Invalid, "invalid outcome record")

// OutcomeEnds are the states a germination can end in (final_state). A run
// that ends with the seed in flight records the state it was in.
var OutcomeEnds = []string{"GERMINATED", "TRAINING", "BLENDING", "HOLDING", "FOSSILIZED", "PRUNED", "CANCELLED", "ROLLED_BACK"}

// StateSpan is the time a germination spent in one lifecycle state.
type StateSpan struct {
	State      string `json:"state"`
	FromStep   int64  `json:"from_step"`
	ToStep     int64  `json:"to_step"`
	Steps      int64  `json:"steps"`
	FromEpoch  int    `json:"from_epoch"`
	ToEpoch    int    `json:"to_epoch"`
	Epochs     int    `json:"epochs"`
	Reason     string `json:"reason"`
	Samples    int64  `json:"samples"`
	TrainFLOPs int64  `json:"train_flops"`
}

// ContributionSample is one HOLDING measurement of a seed.
type ContributionSample struct {
	Epoch int `json:"epoch"`
	// ValLoss is the validation loss with the seed, ValLossWithout without
	// it; DeltaLoss is without minus with (positive: the seed helps). Nil
	// when not measured (non-finite).
	ValLoss        *float64 `json:"val_loss"`
	ValLossWithout *float64 `json:"val_loss_without"`
	DeltaLoss      float64  `json:"delta_loss"`
}

// Outcome is one germination's record. Every field is required unless
// marked optional; Python fills it (docs/internals.md lists the meanings).
type Outcome struct {
	Schema int    `json:"schema"`
	RunID  string `json:"run_id"`
	// Seq numbers the run's germinations from 0 in the order they happened.
	Seq       int    `json:"seq"`
	Layer     int    `json:"layer"`
	LayerName string `json:"layer_name"`
	Slot      int    `json:"slot"`
	// Policy is who decided ("heuristic", "random", "learned" or "manual") and
	// Reason why, in words.
	Policy string `json:"policy"`
	Reason string `json:"reason"`
	// Observation is what the decision saw: epoch metrics, the layer's
	// and the global signals' rolling statistics, the budget used.
	Observation json.RawMessage `json:"observation"`
	// BlueprintID, Template, TemplateParams and Blueprint (the IR, whose
	// host is the host signature) describe the seed.
	BlueprintID    string          `json:"blueprint_id"`
	Template       string          `json:"template"`
	TemplateParams json.RawMessage `json:"template_params"`
	Blueprint      json.RawMessage `json:"blueprint"`
	Host           json.RawMessage `json:"host"`
	ParamCount     int64           `json:"param_count"`
	// FLOPsPerSample is the seed's forward cost of one sample (Karn's);
	// TrainFLOPs estimates the training FLOPs spent on it (the sum of its
	// spans', each TrainFLOPs(FLOPsPerSample, Samples): ParseOutcome fills
	// them), see docs/internals.md.
	FLOPsPerSample int64 `json:"flops_per_sample"`
	TrainFLOPs     int64 `json:"train_flops"`
	// Contributions are the HOLDING measurements, in order.
	Contributions []ContributionSample `json:"contributions"`
	// FinalState is where the germination ended, EndedBy what ended it
	// ("fossilized", "pruned", "cancelled", "rolled_back", "run_end", or
	// "in_flight": written at an end of epoch, replaced when it ends) and
	// FinalReason the reason Go gave.
	FinalState  string `json:"final_state"`
	EndedBy     string `json:"ended_by"`
	FinalReason string `json:"final_reason"`
	// GerminatedStep/Epoch and EndedStep/Epoch bound it; States lists the
	// time in each state, in order.
	GerminatedStep  int64       `json:"germinated_step"`
	GerminatedEpoch int         `json:"germinated_epoch"`
	EndedStep       int64       `json:"ended_step"`
	EndedEpoch      int         `json:"ended_epoch"`
	States          []StateSpan `json:"states"`
	// KernelID is the trained kernel a fossilized seed was published as,
	// SourceKernel the stored kernel the seed started from (both optional).
	KernelID     string `json:"kernel_id,omitempty"`
	SourceKernel string `json:"source_kernel,omitempty"`
	// Prediction is the value the learned policy predicted for this
	// germination when it chose it (policy/value; optional).
	Prediction *float64 `json:"prediction,omitempty"`
	// Written is when the store wrote the record (filled here).
	Written time.Time `json:"written"`
}

var endedBy = []string{"fossilized", "pruned", "cancelled", "rolled_back", "run_end", "in_flight"}

// ParseOutcome decodes and validates a record as PutOutcome receives it
// (strictly: unknown fields, duplicate keys and trailing data are refused).
// Errors wrap ErrInvalidOutcome and name the field.
func ParseOutcome(data []byte) (*Outcome, error) {
	if len(data) > MaxOutcomeBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrInvalidOutcome, len(data), MaxOutcomeBytes)
	}
	var o Outcome
	if err := canon.DecodeStrict(data, &o); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidOutcome, err)
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	return &o, nil
}

func (o *Outcome) check() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidOutcome, fmt.Sprintf(format, args...))
	}
	switch o.Schema {
	case 0:
		o.Schema = OutcomeSchema
	case OutcomeSchema:
	default:
		return bad("schema %d is not %d (this library writes version %d)", o.Schema, OutcomeSchema, OutcomeSchema)
	}
	if !validRunID(o.RunID) {
		return bad("run_id %q must be 1 to %d characters of [a-z0-9_.-], not starting with '.'", o.RunID, maxRunIDLen)
	}
	if o.Seq < 0 || o.Layer < 0 || o.Slot < 0 {
		return bad("seq %d, layer %d and slot %d must be >= 0", o.Seq, o.Layer, o.Slot)
	}
	if !canon.IsID(o.BlueprintID) {
		return bad("blueprint_id %q is not 64 lowercase hex digits", o.BlueprintID)
	}
	for _, k := range []struct{ name, id string }{{"kernel_id", o.KernelID}, {"source_kernel", o.SourceKernel}} {
		if k.id != "" && !canon.IsID(k.id) {
			return bad("%s %q is not an artifact id (64 lowercase hex digits)", k.name, k.id)
		}
	}
	if o.Policy == "" {
		return bad("policy is required")
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{{"observation", o.Observation}, {"template_params", o.TemplateParams}, {"blueprint", o.Blueprint}, {"host", o.Host}} {
		if b := bytes.TrimSpace(f.raw); len(b) == 0 || b[0] != '{' {
			return bad("%s must be a JSON object", f.name)
		}
	}
	if o.ParamCount < 0 || o.FLOPsPerSample < 0 || o.TrainFLOPs < 0 {
		return bad("param_count %d, flops_per_sample %d and train_flops %d must be >= 0", o.ParamCount, o.FLOPsPerSample, o.TrainFLOPs)
	}
	if !slices.Contains(OutcomeEnds, o.FinalState) {
		return bad("final_state %q is not one of %s", o.FinalState, strings.Join(OutcomeEnds, ", "))
	}
	if !slices.Contains(endedBy, o.EndedBy) {
		return bad("ended_by %q is not one of %s", o.EndedBy, strings.Join(endedBy, ", "))
	}
	if o.GerminatedStep < 0 || o.GerminatedEpoch < 0 || o.EndedStep < o.GerminatedStep || o.EndedEpoch < o.GerminatedEpoch {
		return bad("germinated at step %d epoch %d, ended at step %d epoch %d: the end must not precede the start",
			o.GerminatedStep, o.GerminatedEpoch, o.EndedStep, o.EndedEpoch)
	}
	if len(o.States) == 0 {
		return bad("states must list at least the GERMINATED span")
	}
	// Training FLOPs are Go's (TrainFLOPs of flops_per_sample and each
	// span's samples): a writer may leave them 0; a value it gives must agree.
	var sum int64
	for i := range o.States {
		sp := &o.States[i]
		if sp.State == "" || sp.Steps < 0 || sp.Epochs < 0 || sp.Samples < 0 || sp.TrainFLOPs < 0 || sp.ToStep < sp.FromStep {
			return bad("states[%d] (%q): steps, epochs, samples and train_flops must be >= 0 and to_step >= from_step", i, sp.State)
		}
		want := TrainFLOPs(o.FLOPsPerSample, sp.Samples)
		if sp.TrainFLOPs != 0 && sp.TrainFLOPs != want {
			return bad("states[%d] (%q): train_flops %d is not %d x flops_per_sample %d x samples %d = %d",
				i, sp.State, sp.TrainFLOPs, TrainFLOPsFactor, o.FLOPsPerSample, sp.Samples, want)
		}
		sp.TrainFLOPs = want
		if sum > math.MaxInt64-want {
			sum = math.MaxInt64
		} else {
			sum += want
		}
	}
	if o.TrainFLOPs != 0 && o.TrainFLOPs != sum {
		return bad("train_flops %d is not the sum of the states' train_flops (%d)", o.TrainFLOPs, sum)
	}
	o.TrainFLOPs = sum
	if o.Prediction != nil && (math.IsNaN(*o.Prediction) || math.IsInf(*o.Prediction, 0)) {
		return bad("prediction %v must be a finite number", *o.Prediction)
	}
	if o.Contributions == nil {
		o.Contributions = []ContributionSample{}
	}
	return nil
}

func validRunID(s string) bool {
	return validLabel(s, maxRunIDLen) && s[0] != '.'
}

// Name is the record's file name in its run's folder.
func (o *Outcome) Name() string {
	return fmt.Sprintf("%012d-%d-%d-%d", o.GerminatedStep, o.Layer, o.Slot, o.Seq)
}

// runPrefix is the key prefix of a run's outcome records.
func runPrefix(run string) string { return outcomesDir + "/" + run + "/" }

// PutOutcome validates an outcome record, stamps its schema and write time,
// and writes it atomically under outcomes/<run_id>/. It returns the
// record's key, "<run_id>/<name>".
func (s *Store) PutOutcome(data []byte) (_ string, err error) {
	defer s.ops.count(OpPutOutcome, &err)
	if err := s.checkOpen("put outcome"); err != nil {
		return "", err
	}
	o, err := ParseOutcome(data)
	if err != nil {
		return "", fmt.Errorf("urza: put outcome: %w", err)
	}
	o.Written = time.Now().UTC()
	b, err := canon.Marshal(o)
	if err != nil {
		return "", fmt.Errorf("urza: put outcome: %w: %v", ErrInvalidOutcome, err)
	}
	name := o.Name()
	if err := recovery.Retry(context.Background(), s.opts.Retry, func(ctx context.Context) error {
		return s.be.write(ctx, runPrefix(o.RunID)+name+manifestExt, b)
	}); err != nil {
		return "", fmt.Errorf("urza: put outcome %s/%s: %w", o.RunID, name, err)
	}
	return o.RunID + "/" + name, nil
}

// Outcomes returns the records of one run (all runs when run is ""),
// ordered by run, then germination step, layer, slot and seq. Each is the
// stored canonical JSON, decoded leniently (records of a newer schema stay
// readable). A record that does not decode is ErrCorrupt, naming its file.
func (s *Store) Outcomes(run string) ([]json.RawMessage, error) {
	if err := s.checkOpen("outcomes"); err != nil {
		return nil, err
	}
	runs := []string{run}
	if run == "" {
		var err error
		if runs, err = s.runIDs(); err != nil {
			return nil, fmt.Errorf("urza: outcomes: %w", err)
		}
	} else if !validRunID(run) {
		return nil, fmt.Errorf("urza: outcomes: run %q: %w: want 1 to %d characters of [a-z0-9_.-]", run, ErrInvalidOutcome, maxRunIDLen)
	}
	out := []json.RawMessage{}
	for _, r := range runs {
		recs, err := s.readRun(r)
		if err != nil {
			return nil, fmt.Errorf("urza: outcomes: %w", err)
		}
		out = append(out, recs...)
	}
	return out, nil
}

// runIDs lists the run folders, sorted.
func (s *Store) runIDs() ([]string, error) {
	entries, err := s.be.list(context.Background(), outcomesDir+"/", false)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		name := strings.TrimSuffix(strings.TrimPrefix(e.Key, outcomesDir+"/"), "/")
		if e.Dir && validRunID(name) {
			ids = append(ids, name)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// readRun reads one run's records in name order (names sort by step).
func (s *Store) readRun(run string) ([]json.RawMessage, error) {
	ctx := context.Background()
	entries, err := s.runRecords(ctx, run)
	if err != nil {
		return nil, err
	}
	var out []json.RawMessage
	for _, e := range entries {
		name := strings.TrimPrefix(e.Key, runPrefix(run))
		b, obj, err := s.be.read(ctx, e.Key, MaxOutcomeBytes)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed between the listing and now
		}
		if err != nil {
			return nil, err
		}
		if b == nil {
			return nil, fmt.Errorf("%w: outcome %s/%s is %d bytes, over the %d-byte limit", ErrCorrupt, run, name, obj.Size, MaxOutcomeBytes)
		}
		var probe struct {
			Schema int    `json:"schema"`
			RunID  string `json:"run_id"`
		}
		if err := json.Unmarshal(b, &probe); err != nil || probe.RunID != run {
			return nil, fmt.Errorf("%w: outcome %s/%s does not decode as a record of run %s", ErrCorrupt, run, name, run)
		}
		out = append(out, json.RawMessage(b))
	}
	return out, nil
}

// runRecords lists one run's record objects (not temp files), by name.
func (s *Store) runRecords(ctx context.Context, run string) ([]object, error) {
	entries, err := s.be.list(ctx, runPrefix(run), false)
	if err != nil {
		return nil, err
	}
	out := entries[:0]
	for _, e := range entries {
		name := strings.TrimPrefix(e.Key, runPrefix(run))
		if e.Dir || strings.HasPrefix(name, tmpPrefix) || !strings.HasSuffix(name, manifestExt) {
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// RunInfo summarises one run's outcome records.
type RunInfo struct {
	RunID    string         `json:"run_id"`
	Outcomes int            `json:"outcomes"`
	Ended    map[string]int `json:"ended"`
	// ParamsFossilized sums the parameter counts of fossilized seeds.
	ParamsFossilized int64 `json:"params_fossilized"`
	// FirstStep and LastStep are the first germination's step and the last
	// end's; Updated is the newest record's write time.
	FirstStep int64     `json:"first_step"`
	LastStep  int64     `json:"last_step"`
	Updated   time.Time `json:"updated"`
}

// Runs summarises every run that has outcome records, newest first.
func (s *Store) Runs() ([]RunInfo, error) {
	if err := s.checkOpen("runs"); err != nil {
		return nil, err
	}
	ids, err := s.runIDs()
	if err != nil {
		return nil, fmt.Errorf("urza: runs: %w", err)
	}
	out := []RunInfo{}
	for _, id := range ids {
		recs, err := s.readRun(id)
		if err != nil {
			return nil, fmt.Errorf("urza: runs: %w", err)
		}
		if len(recs) == 0 {
			continue
		}
		ri := RunInfo{RunID: id, Ended: map[string]int{}, FirstStep: -1}
		for _, b := range recs {
			var o Outcome
			if err := json.Unmarshal(b, &o); err != nil {
				return nil, fmt.Errorf("urza: runs: %w: outcome of run %s: %v", ErrCorrupt, id, err)
			}
			ri.Outcomes++
			ri.Ended[o.EndedBy]++
			if o.FinalState == "FOSSILIZED" {
				ri.ParamsFossilized += o.ParamCount
			}
			if ri.FirstStep < 0 || o.GerminatedStep < ri.FirstStep {
				ri.FirstStep = o.GerminatedStep
			}
			ri.LastStep = max(ri.LastStep, o.EndedStep)
			if o.Written.After(ri.Updated) {
				ri.Updated = o.Written
			}
		}
		out = append(out, ri)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Updated.After(out[j].Updated) })
	return out, nil
}
