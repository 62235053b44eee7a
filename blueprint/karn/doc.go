// Package karn is Karn's search: it answers Tamiyo's requests for a
// blueprint with a ranked list of candidate IRs, each valid on the request's
// host and within its parameter and FLOP budget, with its predicted gain
// and its exact cost (parameters and FLOPs per sample, Karn's counts).
//
// A Request names the host, the budget left, the layer's signals and what
// was tried before on hosts of the same layout and how it paid (Trials, made
// from Urza's outcome records by TrialFromOutcome). Search seeds a
// population with every library template that supports the host (at its
// defaults, shrunk to the budget) and with the blueprints that paid before
// (the history's trials, best first, their parameters re-instantiated on
// this host), then grows it by mutation (blueprint.Mutate: one parameter
// changed) and crossover (two parents' parameters mixed; across templates,
// the parameters they share by name) under the constraint checker, until
// its evaluation cap or its time budget runs out. New templates and
// parameters of the library take part with no change here: the search
// works through the template table and its parameter specs only.
//
// Candidates are ranked by the Predictor (ridge regression on documented
// features, fitted on outcome records) when it has been fitted on enough
// records; otherwise by the documented prior (see Prior), and the answer
// says which, so a decision's reason never shows a prediction that was not
// made.
//
// Service keeps the predictor for a training run: it reads outcome records
// from a Source (an Urza store), refits when enough new ones have arrived,
// and counts requests and answers.
//
// Concurrency: Search, Fit and Predict are safe for concurrent use (a
// fitted *Predictor is read-only); a *Service is not (the session calls it
// under its own mutex). Randomness comes from the request's seed, so a
// search that reaches its evaluation cap before its time budget is
// reproducible.
package karn
