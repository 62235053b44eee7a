package session_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/nissa"
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
			case oona.KindAlarm:
				s += fmt.Sprintf("/%v", d["alarm"])
			case oona.KindImpact:
				s += fmt.Sprintf("/%v/%v", d["outcome"], d["note"])
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
		"impact/nissa/FOSSILIZED/no prediction", // the manual call predicted nothing; nothing was measured either
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
		"impact/nissa/PRUNED/no prediction",
		"lifecycle/schedule/PRUNED->EMBARGOED",
		"alarm/governor/rollback",
		"decision/governor/rollback",
		"lifecycle/governor/TRAINING->ROLLED_BACK",
		"impact/nissa/ROLLED_BACK/no prediction",
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

func TestSessionPublishesNissasAlarms(t *testing.T) {
	for _, tc := range []struct {
		name   string
		alerts nissa.AlertConfig
		want   map[string]int // "actor/alarm" -> count
	}{
		{"alerts on", nissa.AlertConfig{FailureRate: 0.2, FailureWindow: 10, NoImprovementEpochs: 2, StallSeconds: 0.05},
			map[string]int{"nissa/failure_rate": 1, "nissa/no_improvement": 1, "nissa/stalled": 1}},
		// The negative control: the same run with the checks off raises none.
		{"alerts off", nissa.AlertConfig{FailureRate: -1}, map[string]int{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			cfg.Alerts = tc.alerts
			s := newSession(t, cfg)
			_, sub := attach(t, s)
			germinate(t, s, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
			for i := 0; i < 6; i++ { // a failure every other step: the breaker never opens
				step(t, s, 1)
				if i%2 == 0 {
					if _, err := s.ReportFailure(0, 0, session.FailureNonfinite, "nan"); err != nil {
						t.Fatal(err)
					}
				}
			}
			for e := 0; e < 4; e++ { // a flat validation loss
				if _, err := s.EndEpoch(metrics(e, 1)); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(300 * time.Millisecond) // no step: the stall timer fires
			got := map[string]int{}
			for {
				var ev *oona.Event
				select {
				case ev = <-sub.C():
				default:
				}
				if ev == nil {
					break
				}
				if ev.Kind != oona.KindAlarm {
					continue
				}
				var d struct {
					Alarm, Source, Reason string
					Layer, Slot           int
					Threshold             *float64
				}
				if err := json.Unmarshal(ev.Data, &d); err != nil {
					t.Fatal(err)
				}
				if d.Source != string(ev.Actor) || d.Reason == "" || d.Layer != -1 || d.Slot != -1 || d.Threshold == nil {
					t.Errorf("alarm event %s", ev.Data)
				}
				got[string(ev.Actor)+"/"+d.Alarm]++
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("alarms published %v, want %v", got, tc.want)
			}
		})
	}
}

// TestApplyPublishesTheDecision: a session that takes another's state
// after a decision made there (rank > 0 of a job) with Apply publishes
// what the decision did, as the deciding session did: the same lifecycle
// and decision events, with the same actors; Restore of the same snapshot
// (the control) publishes a resume instead.
func TestApplyPublishesTheDecision(t *testing.T) {
	cfg := baseConfig()
	cfg.Policy = "heuristic"
	cfg.Controller = tamiyo.Config{Patience: 1, Threshold: 0.5}
	decider, follower, control := newSession(t, cfg), newSession(t, cfg), newSession(t, cfg)
	_, subD := attach(t, decider)
	_, subF := attach(t, follower)
	_, subC := attach(t, control)
	received(t, subD)
	received(t, subF)
	received(t, subC)
	for _, s := range []*session.Session{decider, follower, control} {
		step(t, s, 2)
	}
	// Manual: a germination on the deciding session.
	germinate(t, decider, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	snap, err := decider.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := follower.Apply(snap); err != nil {
		t.Fatal(err)
	}
	if err := control.Restore(snap); err != nil {
		t.Fatal(err)
	}
	// The policy: two ends of epoch.
	var want []string
	want = append(want, received(t, subD)...)
	for e := range 2 {
		if _, err := decider.EndEpoch(tamiyo.Metrics{Epoch: &e, ValLoss: nissa.Measure(1)}); err != nil {
			t.Fatal(err)
		}
		snap, err := decider.Snapshot()
		if err != nil {
			t.Fatal(err)
		}
		if err := follower.Apply(snap); err != nil {
			t.Fatal(err)
		}
	}
	for _, ev := range received(t, subD) {
		if ev[:5] != "epoch" && ev[:6] != "health" { // the end of epoch's summary is the deciding rank's
			want = append(want, ev)
		}
	}
	got := received(t, subF)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("follower published\n%v\nthe decider\n%v", got, want)
	}
	if len(got) != 3 || got[0] != "lifecycle/manual/DORMANT->GERMINATED" || got[2] != "decision/policy/wait" {
		t.Fatalf("follower published %v: want the manual germination and the policy's two decisions", got)
	}
	if c := received(t, subC); fmt.Sprint(c) != "[run/system/resume]" {
		t.Fatalf("control: %v", c)
	}
}

// An end of epoch hands its events to the bus together (Bus.PublishAll):
// a subscriber woken when an event lands in its empty buffer (the NATS
// sink) is woken once, with the epoch and health events both there, and
// takes them in one burst (one by one, it would be woken with the epoch
// event alone: the bus's test has that control).
func TestEndEpochHandsItsEventsOverTogether(t *testing.T) {
	s := newSession(t, baseConfig())
	b, sub := attach(t, s)
	first, err := b.Subscribe("first", 64)
	if err != nil {
		t.Fatal(err)
	}
	var seen []int
	first.OnFirst(func() { seen = append(seen, len(first.C())) })
	step(t, s, 3)
	for epoch := range 3 {
		seen = nil
		if _, err := s.EndEpoch(metrics(epoch, 1.0)); err != nil {
			t.Fatal(err)
		}
		if len(seen) != 1 || seen[0] != 2 {
			t.Fatalf("epoch %d: the hook saw buffers of %v, want [2] (epoch and health, once)", epoch, seen)
		}
		var kinds []oona.Kind
		for range 2 {
			kinds = append(kinds, (<-first.C()).Kind)
		}
		if kinds[0] != oona.KindEpoch || kinds[1] != oona.KindHealth {
			t.Fatalf("epoch %d: %v", epoch, kinds)
		}
	}
	received(t, sub)
}
