package metrics_test

import (
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/esper-morph/esper/core/cache"
	"github.com/esper-morph/esper/core/metrics"
	"github.com/esper-morph/esper/core/nissa"
	"github.com/esper-morph/esper/core/urza"
)

func newSet(t *testing.T, v metrics.View) *metrics.Set {
	t.Helper()
	v.Run = "r"
	s, err := metrics.New(func(out *metrics.View) error { *out = v; return nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestTextCarriesTheView(t *testing.T) {
	v := metrics.View{Step: 42, Germinations: 3, States: []metrics.StateCount{{State: "DORMANT", N: 5}},
		Alarms: map[string]int64{nissa.AlarmStalled: 1}, StepRate: math.NaN(), SinceStep: 1.5,
		Breakers: []metrics.Breaker{{Layer: "fc1", Slot: 0, Streak: 2, Limit: 3}},
		Impact:   nissa.ImpactStats{Ended: 2, Predicted: 1, Measured: 1, Compared: 1, AbsErrorSum: 0.5}}
	s := newSet(t, v)
	text, err := s.Text()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`esper_steps_total{rank="0",run="r"} 42`,
		`esper_germinations_total{rank="0",run="r"} 3`,
		`esper_seeds{rank="0",run="r",state="DORMANT"} 5`,
		`esper_alarms_total{kind="stalled",rank="0",run="r"} 1`,
		`esper_seed_breaker_streak{layer="fc1",limit="3",rank="0",run="r",slot="0"} 2`,
		`esper_prediction_abs_error{rank="0",run="r"} 0.5`,
		`esper_adaptations_ended_total{prediction="none",rank="0",run="r"} 1`,
		`esper_seconds_since_step{rank="0",run="r"} 1.5`,
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("missing %q in\n%s", want, text)
		}
	}
	// NaN means "not measured yet": the series is absent, and so are the
	// cache and store series while none is attached.
	if !strings.Contains(string(text), `esper_decision_latency_seconds_count{rank="0",run="r"} 0`) {
		t.Errorf("no empty decision histogram in\n%s", text)
	}
	for _, absent := range []string{"esper_step_rate", "esper_kernel_cache", "esper_urza_operations_total"} {
		if strings.Contains(string(text), absent+"{") {
			t.Errorf("%s present in\n%s", absent, text)
		}
	}
}

func TestAttachedCacheAndStore(t *testing.T) {
	s := newSet(t, metrics.View{StepRate: math.NaN(), SinceStep: math.NaN()})
	c, err := cache.New(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("missing", cache.Want{}); err == nil {
		t.Fatal("a miss was a hit")
	}
	st, err := urza.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if _, err := st.Get(strings.Repeat("a", 64)); err == nil {
		t.Fatal("got an artifact from an empty store")
	}
	s.AttachCache(c)
	s.AttachStore(st)
	s.AttachStore(st) // once
	text, err := s.Text()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`esper_kernel_cache_lookups_total{rank="0",result="miss",run="r"} 1`,
		`esper_urza_operations_total{op="get",rank="0",run="r"} 1`,
		`esper_urza_operation_errors_total{op="get",rank="0",run="r"} 1`,
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("missing %q in\n%s", want, text)
		}
	}
}

func TestServeNeedsAnExplicitHost(t *testing.T) {
	s := newSet(t, metrics.View{StepRate: math.NaN(), SinceStep: math.NaN()})
	if _, err := s.Serve("", 0); !errors.Is(err, metrics.ErrListen) {
		t.Fatalf("empty host: %v", err)
	}
	if _, err := s.Serve("127.0.0.1", 70000); !errors.Is(err, metrics.ErrListen) {
		t.Fatalf("bad port: %v", err)
	}
	addr, err := s.Serve("127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Serve("127.0.0.1", 0); !errors.Is(err, metrics.ErrServing) {
		t.Fatalf("second serve: %v", err)
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "esper_steps_total") {
		t.Fatalf("status %d body\n%s", resp.StatusCode, body)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s.Addr() != nil {
		t.Fatal("still serving after Close")
	}
}

func TestLatencyBuckets(t *testing.T) {
	var l metrics.Latency
	for _, d := range []time.Duration{5 * time.Microsecond, 30 * time.Microsecond, 2 * time.Second} {
		l.Observe(d)
	}
	s := newSet(t, metrics.View{StepRate: math.NaN(), SinceStep: math.NaN(), DecisionLatency: l})
	text, err := s.Text()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`esper_decision_latency_seconds_bucket{rank="0",run="r",le="1e-05"} 1`,
		`esper_decision_latency_seconds_bucket{rank="0",run="r",le="5e-05"} 2`,
		`esper_decision_latency_seconds_bucket{rank="0",run="r",le="1"} 2`,
		`esper_decision_latency_seconds_bucket{rank="0",run="r",le="+Inf"} 3`,
		`esper_decision_latency_seconds_count{rank="0",run="r"} 3`,
	} {
		if !strings.Contains(string(text), want) {
			t.Errorf("missing %q in\n%s", want, text)
		}
	}
}
