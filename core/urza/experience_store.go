package urza

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/esper-morph/esper/blueprint/canon"
	"github.com/esper-morph/esper/core/recovery"
)

// experiencePrefix is the key prefix of a trainer run's experience records.
func experiencePrefix(run string) string { return experienceDir + "/" + run + "/" }

// PutExperience validates an experience record, stamps its schema and write
// time, and writes it atomically as
// experience/<trainer_run>/<mode>-<episode>.json, replacing a record of the
// same trainer run, mode and episode. It returns the record's key,
// "<trainer_run>/<mode>-<episode>".
func (s *Store) PutExperience(data []byte) (_ string, err error) {
	defer s.ops.count(OpPutExperience, &err)
	if err := s.checkOpen("put experience"); err != nil {
		return "", err
	}
	e, err := ParseExperience(data)
	if err != nil {
		return "", fmt.Errorf("urza: put experience: %w", err)
	}
	e.Written = time.Now().UTC()
	b, err := canon.Marshal(e)
	if err != nil {
		return "", fmt.Errorf("urza: put experience: %w: %v", ErrInvalidExperience, err)
	}
	name := e.Name()
	if err := recovery.Retry(context.Background(), s.opts.Retry, func(ctx context.Context) error {
		return s.be.write(ctx, experiencePrefix(e.TrainerRun)+name+manifestExt, b)
	}); err != nil {
		return "", fmt.Errorf("urza: put experience %s/%s: %w", e.TrainerRun, name, err)
	}
	return e.TrainerRun + "/" + name, nil
}

// experienceFile is one listed record: its mode and episode, parsed from
// its name, and its object.
type experienceFile struct {
	mode    int // index in ExperienceModes
	episode int64
	obj     object
}

// experienceFiles lists a trainer run's records (not temp files or other
// names), in ExperienceModes order, then by episode.
func (s *Store) experienceFiles(ctx context.Context, run string) ([]experienceFile, error) {
	entries, err := s.be.list(ctx, experiencePrefix(run), false)
	if err != nil {
		return nil, err
	}
	var out []experienceFile
	for _, e := range entries {
		name, ok := strings.CutSuffix(strings.TrimPrefix(e.Key, experiencePrefix(run)), manifestExt)
		mode, num, cut := strings.Cut(name, "-")
		m := slices.Index(ExperienceModes, mode)
		n, err := strconv.ParseInt(num, 10, 64)
		if e.Dir || !ok || !cut || m < 0 || err != nil || len(num) != 9 {
			continue
		}
		out = append(out, experienceFile{mode: m, episode: n, obj: e})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].mode != out[j].mode {
			return out[i].mode < out[j].mode
		}
		return out[i].episode < out[j].episode
	})
	return out, nil
}

// Experience returns one trainer run's records in the order the trainer
// ran them: mode "heuristic" (behaviour cloning's runs) then "policy", each
// by episode. Each is the stored canonical JSON, decoded leniently (records
// of a newer schema stay readable). A record that does not decode as one of
// this run is ErrCorrupt, naming its file; a run with none is empty.
func (s *Store) Experience(run string) ([]json.RawMessage, error) {
	if err := s.checkOpen("experience"); err != nil {
		return nil, err
	}
	if !validRunID(run) {
		return nil, fmt.Errorf("urza: experience: trainer run %q: %w: want 1 to %d characters of [a-z0-9_:.-]", run, ErrInvalidExperience, maxRunIDLen)
	}
	ctx := context.Background()
	files, err := s.experienceFiles(ctx, run)
	if err != nil {
		return nil, fmt.Errorf("urza: experience: %w", err)
	}
	out := []json.RawMessage{}
	for _, f := range files {
		b, obj, err := s.be.read(ctx, f.obj.Key, MaxExperienceBytes)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed between the listing and now
		}
		if err != nil {
			return nil, fmt.Errorf("urza: experience: %w", err)
		}
		name := strings.TrimPrefix(f.obj.Key, experiencePrefix(run))
		if b == nil {
			return nil, fmt.Errorf("urza: experience: %w: %s/%s is %d bytes, over the %d-byte limit", ErrCorrupt, run, name, obj.Size, MaxExperienceBytes)
		}
		var probe struct {
			TrainerRun string `json:"trainer_run"`
			Mode       string `json:"mode"`
			Episode    int64  `json:"episode"`
		}
		if err := json.Unmarshal(b, &probe); err != nil || probe.TrainerRun != run ||
			probe.Mode != ExperienceModes[f.mode] || probe.Episode != f.episode {
			return nil, fmt.Errorf("urza: experience: %w: %s/%s does not decode as that record of trainer run %s", ErrCorrupt, run, name, run)
		}
		out = append(out, json.RawMessage(b))
	}
	return out, nil
}

// ExperienceRun summarises one trainer run's experience records, from the
// listing alone (no record is read).
type ExperienceRun struct {
	TrainerRun string `json:"trainer_run"`
	// Episodes counts the records of each mode; LastEpisode is the highest
	// episode of each mode.
	Episodes    map[string]int   `json:"episodes"`
	LastEpisode map[string]int64 `json:"last_episode"`
	// Updated is the newest record's modification time.
	Updated time.Time `json:"updated"`
}

// ExperienceRuns summarises every trainer run with experience records,
// newest first.
func (s *Store) ExperienceRuns() ([]ExperienceRun, error) {
	if err := s.checkOpen("experience runs"); err != nil {
		return nil, err
	}
	ctx := context.Background()
	entries, err := s.be.list(ctx, experienceDir+"/", false)
	if err != nil {
		return nil, fmt.Errorf("urza: experience runs: %w", err)
	}
	out := []ExperienceRun{}
	for _, e := range entries {
		run := strings.TrimSuffix(strings.TrimPrefix(e.Key, experienceDir+"/"), "/")
		if !e.Dir || !validRunID(run) {
			continue
		}
		files, err := s.experienceFiles(ctx, run)
		if err != nil {
			return nil, fmt.Errorf("urza: experience runs: %w", err)
		}
		if len(files) == 0 {
			continue
		}
		info := ExperienceRun{TrainerRun: run, Episodes: map[string]int{}, LastEpisode: map[string]int64{}}
		for _, f := range files {
			mode := ExperienceModes[f.mode]
			info.Episodes[mode]++
			info.LastEpisode[mode] = max(info.LastEpisode[mode], f.episode)
			if f.obj.ModTime.After(info.Updated) {
				info.Updated = f.obj.ModTime.UTC()
			}
		}
		out = append(out, info)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Updated.After(out[j].Updated) })
	return out, nil
}
