package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/esper-morph/esper/core/cache"
	"github.com/esper-morph/esper/core/urza"
)

// collector turns a View (and the attached cache and stores) into series at
// each collection.
type collector struct {
	src Source
	set *Set

	seeds, params, step, epoch, stepRate, sinceStep          *prometheus.Desc
	germinations, fossilizations, prunes, cancels, rollbacks *prometheus.Desc
	failures, decisions, events, trips, streak, alarms       *prometheus.Desc
	impactEnded, impactPredicted, impactCompared, impactMAE  *prometheus.Desc
	cacheOps, cacheBytes, cacheEntries, urzaOps, urzaErrors  *prometheus.Desc
	urzaOpen, cacheEvict, decision                           *prometheus.Desc
	busEvents, busDelivered, busDropped, busPending          *prometheus.Desc
}

func newCollector(src Source, set *Set) *collector {
	d := func(name, help string, vars ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append([]string{"run", "rank"}, vars...), nil)
	}
	return &collector{
		src: src, set: set,
		seeds:           d("esper_seeds", "Seed slots in each lifecycle state, now.", "state"),
		params:          d("esper_seed_params", "Parameters held by live and fossilized seeds, now."),
		step:            d("esper_steps_total", "Optimizer steps reported to the session."),
		epoch:           d("esper_epoch", "The epoch in progress."),
		stepRate:        d("esper_step_rate", "Training speed over the recent measured windows, in steps per second."),
		sinceStep:       d("esper_seconds_since_step", "Seconds since the trainer last reported steps."),
		germinations:    d("esper_germinations_total", "Seeds germinated."),
		fossilizations:  d("esper_fossilizations_total", "Seeds fossilized."),
		prunes:          d("esper_prunes_total", "Seeds pruned."),
		cancels:         d("esper_cancellations_total", "Seeds cancelled before they touched the host."),
		rollbacks:       d("esper_rollbacks_total", "Seeds rolled back by the governor."),
		failures:        d("esper_seed_failures_total", "Seed failures reported by the trainer (forward errors, non-finite or misshaped outputs, failed builds)."),
		decisions:       d("esper_decisions_total", "Decisions applied (the controller's, manual ones excluded, and the governor's rollbacks)."),
		events:          d("esper_lifecycle_events_total", "Lifecycle transitions."),
		trips:           d("esper_breaker_trips_total", "Seed circuit breakers that opened (the seed was then pruned or cancelled)."),
		streak:          d("esper_seed_breaker_streak", "Consecutive failing steps of a live seed's breaker, now (it opens at limit).", "layer", "slot", "limit"),
		alarms:          d("esper_alarms_total", "Alarms raised, by kind (docs/metrics.md).", "kind"),
		impactEnded:     d("esper_adaptations_ended_total", "Adaptations (germinations) that ended, by whether their policy predicted a gain.", "prediction"),
		impactPredicted: d("esper_adaptations_measured_total", "Ended adaptations whose contribution was measured."),
		impactCompared:  d("esper_adaptations_compared_total", "Ended adaptations with both a predicted and a measured gain."),
		impactMAE:       d("esper_prediction_abs_error", "Mean absolute error of predicted against measured gains (relative gains: the share of the validation loss without the seed that it removed); absent while no policy made a prediction."),
		cacheOps:        d("esper_kernel_cache_lookups_total", "Kernel cache lookups, by result (the process's cache, shared by every run in it).", "result"),
		cacheBytes:      d("esper_kernel_cache_bytes", "Bytes held by the kernel cache, now."),
		cacheEntries:    d("esper_kernel_cache_entries", "Artifacts held by the kernel cache, now."),
		urzaOps:         d("esper_urza_operations_total", "Urza store operations made through this process's store handles, by operation.", "op"),
		urzaErrors:      d("esper_urza_operation_errors_total", "Urza store operations that returned an error, by operation.", "op"),
		decision:        d("esper_decision_latency_seconds", "Time the controller took to decide at an end of epoch (Tamiyo's decisions and their application)."),
		cacheEvict:      d("esper_kernel_cache_evictions_total", "Artifacts the kernel cache evicted to stay within its byte bound."),
		urzaOpen:        d("esper_urza_breakers_open", "Urza circuit breakers open now (artifacts whose loads keep failing)."),
		busEvents:       d("esper_bus_events_total", "Events published on the run's Oona bus (its throughput is the rate of this)."),
		busDelivered:    d("esper_bus_delivered_total", "Events the bus put in a subscriber's buffer, by subscriber (runlog, nats).", "subscriber"),
		busDropped:      d("esper_bus_dropped_total", "Events a subscriber's full buffer refused (the bus never waits), by subscriber.", "subscriber"),
		busPending:      d("esper_bus_pending", "Events waiting in a subscriber's buffer now, by subscriber.", "subscriber"),
	}
}

// Describe sends every descriptor.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.seeds, c.params, c.step, c.epoch, c.stepRate, c.sinceStep, c.germinations,
		c.fossilizations, c.prunes, c.cancels, c.rollbacks, c.failures, c.decisions, c.events, c.trips, c.streak, c.alarms,
		c.impactEnded, c.impactPredicted, c.impactCompared, c.impactMAE, c.cacheOps, c.cacheBytes, c.cacheEntries,
		c.urzaOps, c.urzaErrors, c.urzaOpen, c.cacheEvict, c.decision, c.busEvents, c.busDelivered, c.busDropped,
		c.busPending} {
		ch <- d
	}
}

// Collect reads the View and the attached sources.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var v View
	if err := c.src(&v); err != nil {
		ch <- prometheus.NewInvalidMetric(c.step, err)
		return
	}
	rank := strconv.Itoa(v.Rank)
	gauge := func(d *prometheus.Desc, x float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, x, append([]string{v.Run, rank}, lv...)...)
	}
	counter := func(d *prometheus.Desc, x float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, x, append([]string{v.Run, rank}, lv...)...)
	}
	dl := &v.DecisionLatency
	ch <- prometheus.MustNewConstHistogram(c.decision, dl.N, dl.Sum, dl.cumulative(), v.Run, rank)
	for _, sc := range v.States {
		gauge(c.seeds, float64(sc.N), sc.State)
	}
	gauge(c.params, float64(v.ParamsUsed))
	counter(c.step, float64(v.Step))
	gauge(c.epoch, float64(v.Epoch))
	if x, ok := num(v.StepRate); ok {
		gauge(c.stepRate, x)
	}
	if x, ok := num(v.SinceStep); ok {
		gauge(c.sinceStep, x)
	}
	for _, kv := range []struct {
		d *prometheus.Desc
		n int64
	}{{c.germinations, v.Germinations}, {c.fossilizations, v.Fossilizations}, {c.prunes, v.Prunes},
		{c.cancels, v.Cancels}, {c.rollbacks, v.Rollbacks}, {c.failures, v.Failures}, {c.decisions, v.Decisions},
		{c.events, v.Events}, {c.trips, v.BreakerTrips}} {
		counter(kv.d, float64(kv.n))
	}
	for _, b := range v.Breakers {
		gauge(c.streak, float64(b.Streak), b.Layer, strconv.Itoa(b.Slot), strconv.Itoa(b.Limit))
	}
	for kind, n := range v.Alarms {
		counter(c.alarms, float64(n), kind)
	}
	im := v.Impact
	counter(c.impactEnded, float64(im.Predicted), "made")
	counter(c.impactEnded, float64(im.Ended-im.Predicted), "none")
	counter(c.impactPredicted, float64(im.Measured))
	counter(c.impactCompared, float64(im.Compared))
	if mae, ok := im.MeanAbsError(); ok {
		gauge(c.impactMAE, mae)
	}
	if b := v.Bus; b != nil {
		counter(c.busEvents, float64(b.Published))
		for _, sub := range b.Subscribers {
			counter(c.busDelivered, float64(sub.Delivered), sub.Name)
			counter(c.busDropped, float64(sub.Dropped), sub.Name)
			gauge(c.busPending, float64(sub.Pending), sub.Name)
		}
	}
	caches, stores := c.set.attached()
	c.collectCaches(counter, gauge, caches)
	c.collectStores(counter, gauge, stores)
}

// emit sends one series of a descriptor with its variable labels (run and
// rank added).
type emit func(d *prometheus.Desc, x float64, lv ...string)

func (c *collector) collectCaches(counter, gauge emit, caches []*cache.Cache) {
	if len(caches) == 0 {
		return
	}
	var st cache.Stats
	for _, k := range caches {
		s := k.Stats()
		st.Hits += s.Hits
		st.Misses += s.Misses
		st.CompatMisses += s.CompatMisses
		st.Evictions += s.Evictions
		st.Rejected += s.Rejected
		st.Bytes += s.Bytes
		st.Entries += s.Entries
	}
	for _, kv := range []struct {
		result string
		n      uint64
	}{{"hit", st.Hits}, {"miss", st.Misses}, {"compat_miss", st.CompatMisses}} {
		counter(c.cacheOps, float64(kv.n), kv.result)
	}
	counter(c.cacheEvict, float64(st.Evictions))
	gauge(c.cacheBytes, float64(st.Bytes))
	gauge(c.cacheEntries, float64(st.Entries))
}

func (c *collector) collectStores(counter, gauge emit, stores []*urza.Store) {
	if len(stores) == 0 {
		return
	}
	calls := map[urza.Op]uint64{}
	errs := map[urza.Op]uint64{}
	open := 0
	for _, st := range stores {
		for op, n := range st.OpStats() {
			calls[op] += n.Calls
			errs[op] += n.Errors
		}
		open += st.OpenBreakers()
	}
	for _, op := range urza.Ops {
		counter(c.urzaOps, float64(calls[op]), op.String())
		counter(c.urzaErrors, float64(errs[op]), op.String())
	}
	gauge(c.urzaOpen, float64(open))
}
