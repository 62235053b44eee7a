package session_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	promset "github.com/esper-morph/esper/core/metrics"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/policy/tamiyo"
)

// scrape parses the session's text exposition into name{labels} -> value.
func scrape(t testing.TB, text []byte) map[string]float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("parse: %v\n%s", err, text)
	}
	out := map[string]float64{}
	for name, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var key strings.Builder
			key.WriteString(name)
			for _, l := range m.GetLabel() {
				if l.GetName() == "run" || l.GetName() == "rank" {
					continue
				}
				fmt.Fprintf(&key, ",%s=%s", l.GetName(), l.GetValue())
			}
			switch {
			case m.Counter != nil:
				out[key.String()] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key.String()] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key.String()+",count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func metricsOf(t testing.TB, s *session.Session) map[string]float64 {
	t.Helper()
	text, err := s.MetricsText()
	if err != nil {
		t.Fatal(err)
	}
	return scrape(t, text)
}

func TestMetricsFollowTheSession(t *testing.T) {
	cfg := baseConfig()
	cfg.Metrics = session.MetricsConfig{Run: "r1", Rank: 2}
	cfg.Governor.MaxConcurrent = 2
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	germinate(t, s, 1, 1, `{"template":"residual_mlp","params":{"width":4}}`)
	step(t, s, 3)
	if _, err := s.Prune(1, 1, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReportFailure(0, 0, session.FailureException, "boom"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.EndEpoch(metrics(0, 1)); err != nil {
		t.Fatal(err)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	m := metricsOf(t, s)
	want := map[string]float64{
		"esper_germinations_total":                           float64(st.Counters.Germinations),
		"esper_prunes_total":                                 float64(st.Counters.Prunes),
		"esper_seed_failures_total":                          float64(st.Counters.Failures),
		"esper_lifecycle_events_total":                       float64(st.Counters.Events),
		"esper_steps_total":                                  float64(st.Step),
		"esper_epoch":                                        float64(st.Epoch),
		"esper_decision_latency_seconds,count":               1,
		"esper_seed_breaker_streak,layer=fc1,limit=3,slot=0": 1,
		"esper_alarms_total,kind=rollback":                   0,
		"esper_adaptations_ended_total,prediction=none":      1, // the pruned seed
		"esper_adaptations_ended_total,prediction=made":      0,
	}
	for state, n := range st.States {
		want["esper_seeds,state="+state] = float64(n)
	}
	if st.Counters.Germinations != 2 || st.Counters.Prunes != 1 || st.Counters.Failures != 1 {
		t.Fatalf("the scenario did not happen: %+v", st.Counters)
	}
	for k, v := range want {
		if got, ok := m[k]; !ok || got != v {
			t.Errorf("%s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if _, ok := m["esper_prediction_abs_error"]; ok {
		t.Error("the running error is reported although no policy predicted")
	}
	// The labels are the run's.
	text, _ := s.MetricsText()
	if !bytes.Contains(text, []byte(`rank="2",run="r1"`)) {
		t.Errorf("labels missing:\n%s", text)
	}
}

func TestMetricsEndpointOnLoopback(t *testing.T) {
	s := newSession(t, baseConfig())
	addr, err := s.ServeMetrics("127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(addr.String(), "127.0.0.1:") {
		t.Fatalf("bound %s", addr)
	}
	if _, err := s.ServeMetrics("127.0.0.1", 0); !errors.Is(err, promset.ErrServing) {
		t.Fatalf("second serve: %v", err)
	}
	if _, err := s.ServeMetrics("", 0); err == nil {
		t.Fatal("an empty host was accepted")
	}
	step(t, s, 7)
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if m := scrape(t, body); m["esper_steps_total"] != 7 {
		t.Fatalf("scraped steps %v, want 7", m["esper_steps_total"])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + addr.String() + "/metrics"); err == nil {
		t.Fatal("the endpoint still answers after Close")
	}
}

func TestAlarmsAreReportedAndLogged(t *testing.T) {
	cfg := baseConfig()
	cfg.Alerts = nissa.AlertConfig{FailureRate: 0.2, FailureWindow: 10, NoImprovementEpochs: 2, StallSeconds: 0.05}
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	// Failures every other step: the breaker (3 consecutive) never opens, the rate alarm does.
	for i := 0; i < 6; i++ {
		step(t, s, 1)
		if i%2 == 0 {
			if _, err := s.ReportFailure(0, 0, session.FailureNonfinite, "nan"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for e := 0; e < 4; e++ {
		if _, err := s.EndEpoch(metrics(e, 1)); err != nil {
			t.Fatal(err)
		}
	}
	// A loss spike: the governor rolls back, Nissa reports it.
	alphas := make([]float32, 4)
	for i := 0; i < 6; i++ {
		if _, err := s.Step(1, signals(2, 1, 0), alphas); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Step(1, signals(2, 100, 0), alphas); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // no step: the stall timer fires
	r, err := s.Reports()
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, a := range r.Alarms {
		kinds[a.Kind]++
	}
	want := map[string]int{nissa.AlarmFailureRate: 1, nissa.AlarmNoImprovement: 1, nissa.AlarmRollback: 1, nissa.AlarmStalled: 1}
	for k, n := range want {
		if kinds[k] != n {
			t.Errorf("%d %s alarms, want %d (all: %+v)", kinds[k], k, n, r.Alarms)
		}
	}
	m := metricsOf(t, s)
	for k, n := range want {
		if got := m["esper_alarms_total,kind="+k]; got != float64(n) {
			t.Errorf("metric %s = %v, want %d", k, got, n)
		}
	}
	// The growth log holds them too; a second drain is empty.
	log, err := s.GrowthLog()
	if err != nil {
		t.Fatal(err)
	}
	logged := 0
	for _, e := range log.Entries {
		if e.Kind == "alarm" && e.Alarm != nil {
			logged++
		}
	}
	if logged != len(r.Alarms) {
		t.Errorf("%d alarms in the growth log, %d reported", logged, len(r.Alarms))
	}
	if r2, _ := s.Reports(); len(r2.Alarms) != 0 || len(r2.Impacts) != 0 {
		t.Errorf("second drain: %+v", r2)
	}
}

func TestImpactSurvivesSnapshot(t *testing.T) {
	cfg := baseConfig()
	s := newSession(t, cfg)
	germinate(t, s, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	step(t, s, 20) // TRAINING 10, BLENDING 4: HOLDING
	if _, err := s.EndEpoch(metrics(0, 1, tamiyo.Contribution{Layer: 0, Slot: 0, DeltaLoss: 0.25})); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	back := newSession(t, cfg)
	if err := back.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if _, err := back.Fossilize(0, 0, "kept"); err != nil {
		t.Fatal(err)
	}
	r, err := back.Reports()
	if err != nil {
		t.Fatal(err)
	}
	// Validation loss 1 with the seed, 1.25 without: a relative gain of 0.25 / 1.25 = 0.2.
	if len(r.Impacts) != 1 || r.Impacts[0].MeasuredGain == nil || *r.Impacts[0].MeasuredGain != 0.2 ||
		r.Impacts[0].MeasuredDeltaLoss == nil || *r.Impacts[0].MeasuredDeltaLoss != 0.25 ||
		r.Impacts[0].Note != "no prediction" || r.Impacts[0].Outcome != "FOSSILIZED" {
		t.Fatalf("impacts after restore: %+v", r.Impacts)
	}
}

func TestEachSessionHasItsOwnRegistry(t *testing.T) {
	a, b := newSession(t, baseConfig()), newSession(t, baseConfig())
	germinate(t, a, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	step(t, a, 5)
	if ma, mb := metricsOf(t, a), metricsOf(t, b); ma["esper_germinations_total"] != 1 || mb["esper_germinations_total"] != 0 ||
		ma["esper_steps_total"] != 5 || mb["esper_steps_total"] != 0 {
		t.Fatalf("a: %v, b: %v", ma["esper_germinations_total"], mb["esper_germinations_total"])
	}
}

func TestScrapesWhileTraining(t *testing.T) {
	cfg := baseConfig()
	cfg.Alerts = nissa.AlertConfig{StepTimeFactor: 2, StallSeconds: 0.01}
	s := newSession(t, cfg)
	addr, err := s.ServeMetrics("127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 20; i++ {
			resp, err := http.Get("http://" + addr.String() + "/metrics")
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
	}()
	alphas := make([]float32, 4)
	for i := 0; i < 200; i++ {
		if _, err := s.Step(1, signals(2, 1, 0), alphas); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			if _, err := s.Reports(); err != nil {
				t.Fatal(err)
			}
		}
	}
	<-done
	if m := metricsOf(t, s); m["esper_steps_total"] != 200 {
		t.Fatalf("steps %v", m["esper_steps_total"])
	}
}

func TestRestoredRunKeepsItsIDOnThisRank(t *testing.T) {
	cfg := baseConfig()
	cfg.Metrics = session.MetricsConfig{Run: "first", Rank: 0}
	s := newSession(t, cfg)
	snap, err := s.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	cfg.Metrics = session.MetricsConfig{Run: "fresh", Rank: 1}
	back := newSession(t, cfg)
	if err := back.Restore(snap); err != nil {
		t.Fatal(err)
	}
	text, err := back.MetricsText()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(text, []byte(`esper_steps_total{rank="1",run="first"} 0`)) {
		t.Fatalf("labels after restore:\n%s", text)
	}
}

// The bus's throughput and drops are read from the attached bus at each
// scrape: events published, and per subscriber delivered, dropped (a full
// buffer) and pending; absent while the session has no bus.
func TestMetricsCountTheBus(t *testing.T) {
	s := newSession(t, baseConfig())
	if m := metricsOf(t, s); hasPrefix(m, "esper_bus_") {
		t.Fatalf("bus series without a bus: %v", m)
	}
	b, sub := attach(t, s)
	slow, err := b.Subscribe("slow", 1) // never read: its buffer fills at once
	if err != nil {
		t.Fatal(err)
	}
	germinate(t, s, 0, 0, `{"template":"residual_mlp","params":{"width":4}}`)
	step(t, s, 3)
	if _, err := s.EndEpoch(tamiyo.Metrics{}); err != nil {
		t.Fatal(err)
	}
	got := len(received(t, sub))
	st := b.Stats()
	m := metricsOf(t, s)
	want := map[string]float64{
		"esper_bus_events_total":                    float64(st.Published),
		"esper_bus_delivered_total,subscriber=test": float64(got),
		"esper_bus_dropped_total,subscriber=test":   0,
		"esper_bus_delivered_total,subscriber=slow": 1,
		"esper_bus_dropped_total,subscriber=slow":   float64(slow.Stats().Dropped),
		"esper_bus_pending,subscriber=slow":         1,
		"esper_bus_pending,subscriber=test":         0,
	}
	// slow subscribed after the run's start event: it saw the others, kept one.
	if st.Published < 3 || got != int(st.Published) || slow.Stats().Dropped != st.Published-2 {
		t.Fatalf("the scenario did not happen: %d received, %+v", got, st)
	}
	for k, v := range want {
		if g, ok := m[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}

func hasPrefix(m map[string]float64, prefix string) bool {
	for k := range m {
		if strings.HasPrefix(k, prefix) {
			return true
		}
	}
	return false
}
