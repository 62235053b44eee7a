package session_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/esper-morph/esper/core/oona"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// attach returns a bus attached to s and a subscription that sees all of
// its events.
func attach(t testing.TB, s *session.Session) (*oona.Bus, *oona.Subscription) {
	t.Helper()
	b, err := oona.New(oona.Config{Run: "test-run"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	sub, err := b.Subscribe("test", 4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.AttachBus(b); err != nil {
		t.Fatal(err)
	}
	return b, sub
}

// received drains what sub holds now, as "kind/actor[/detail]".
func received(t testing.TB, sub *oona.Subscription) []string {
	t.Helper()
	var out []string
	for {
		select {
		case ev := <-sub.C():
			var d map[string]any
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				t.Fatal(err)
			}
			s := string(ev.Kind) + "/" + string(ev.Actor)
			switch ev.Kind {
			case oona.KindLifecycle:
				s += fmt.Sprintf("/%v->%v", d["from"], d["to"])
			case oona.KindDecision:
				s += fmt.Sprintf("/%v", d["op"])
			case oona.KindRun:
				s += fmt.Sprintf("/%v", d["phase"])
			}
			out = append(out, s)
		default:
			return out
		}
	}
}

func TestSessionPublishesItsEventsWithActors(t *testing.T) {
	s := newSession(t, baseConfig())
	_, sub := attach(t, s)
	germinate(t, s, 0, 1, `{"template":"residual_mlp","params":{"width":4}}`)
	step(t, s, 10+4+1) // TRAINING, BLENDING, HOLDING by schedule
	if _, err := s.Fossilize(0, 1, ""); err != nil {
		t.Fatal(err)
	}
	germinate(t, s, 1, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	if _, err := s.ReportFailure(1, 0, session.FailureException, "boom"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndEpoch(metrics(0, 1.0)); err != nil {
		t.Fatal(err)
	}
	got := received(t, sub)
	want := []string{
		"run/system/start",
		"lifecycle/manual/DORMANT->GERMINATED",
		"lifecycle/schedule/GERMINATED->TRAINING",
		"lifecycle/schedule/TRAINING->BLENDING",
		"lifecycle/schedule/BLENDING->HOLDING",
		"lifecycle/manual/HOLDING->FOSSILIZED",
		"lifecycle/manual/DORMANT->GERMINATED",
		"failure/trainer",
		"epoch/trainer", // the manual policy decides nothing

		"health/trainer",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("published\n%v\nwant\n%v", got, want)
	}
}

func TestSessionPublishesGovernorRollbackAndBreaker(t *testing.T) {
	cfg := baseConfig()
	cfg.Breaker.Failures = 1
	cfg.Governor.MaxConcurrent = 2
	s := newSession(t, cfg)
	_, sub := attach(t, s)
	germinate(t, s, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	germinate(t, s, 1, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	step(t, s, 1)
	if _, err := s.ReportFailure(1, 0, session.FailureNonfinite, "nan"); err != nil {
		t.Fatal(err)
	}
	alphas := make([]float32, 4)
	if _, err := s.Step(1, signals(2, 1, 1), alphas); err != nil { // a non-finite signal: the governor rolls back
		t.Fatal(err)
	}
	got := received(t, sub)
	want := []string{
		"run/system/start",
		"lifecycle/manual/DORMANT->GERMINATED",
		"lifecycle/manual/DORMANT->GERMINATED",
		"lifecycle/schedule/GERMINATED->TRAINING",
		"lifecycle/schedule/GERMINATED->TRAINING",
		"failure/trainer",
		"lifecycle/breaker/TRAINING->PRUNED",
		"lifecycle/schedule/PRUNED->EMBARGOED",
		"alarm/governor",
		"decision/governor/rollback",
		"lifecycle/governor/TRAINING->ROLLED_BACK",
		"lifecycle/schedule/ROLLED_BACK->EMBARGOED",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("published\n%v\nwant\n%v", got, want)
	}
}

func TestSessionResumeAndEnd(t *testing.T) {
	s := newSession(t, baseConfig())
	step(t, s, 3)
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	b, sub := attach(t, s)
	if err := s.Restore(snap); err != nil {
		t.Fatal(err)
	}
	// Detached: nothing more is published.
	if err := s.AttachBus(nil); err != nil {
		t.Fatal(err)
	}
	step(t, s, 1)
	if err := s.AttachBus(b); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got := received(t, sub)
	want := []string{"run/system/resume", "run/system/resume", "run/system/resume", "run/system/end"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("published %v, want %v", got, want)
	}
	if st := b.Stats(); st.Published != 4 {
		t.Fatalf("published %d", st.Published)
	}
}

func TestSessionWithoutBusPublishesNothing(t *testing.T) {
	s := newSession(t, baseConfig())
	germinate(t, s, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	if _, err := s.EndEpoch(tamiyo.Metrics{}); err != nil {
		t.Fatal(err)
	}
	b, sub := attach(t, s)
	if got := received(t, sub); fmt.Sprint(got) != "[run/system/resume]" {
		t.Fatalf("got %v", got)
	}
	_ = b
}
