// Package metrics exports one training run's metrics in the Prometheus
// formats, from a registry of its own (client_golang's
// prometheus.NewRegistry, never the process-wide default one).
//
// A Set is created by its owner (core/session) with a Source: a function
// that fills a View from the owner's state under the owner's lock. Nearly
// every series is computed from that View at collection time (seeds by
// state, the run's counters, breaker streaks, alarms, the impact analysis),
// so the training step pays nothing for metrics: the counters the session
// keeps anyway are the one truth, read when a scraper asks. Only the
// decision latency is observed as it happens, into a Latency the owner
// keeps under its own lock. The labels run and rank come with the View too.
// A kernel cache
// (core/cache) and Urza stores (core/urza) can be attached; their counters
// are read the same way.
//
// Two exports, both opt-in: Text encodes the text exposition format (for
// the C ABI, and so a prometheus_client collector in Python), and Serve
// runs promhttp on a listener of the caller's choosing (loopback by
// default in every caller: the host is always explicit here).
//
// Concurrency: every method of *Set is safe for concurrent use.
package metrics
