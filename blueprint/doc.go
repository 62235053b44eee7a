// Package blueprint is Karn: the blueprint IR, its validation and canonical
// id, the template library, the constraint checker and mutation for search.
//
// A blueprint is a small graph of typed ops (docs/internals.md, "Blueprint
// IR") that Tezzeret builds into an nn.Module from a fixed table of trusted
// op builders. This package owns that table: every op, its attributes and how
// it transforms shapes, parameter counts and FLOPs. An IR is valid when every
// op is known with valid attributes, every input exists, the graph is acyclic,
// every op reaches the output, shapes propagate from the host's input to
// exactly the host's output shape, and the output is exactly zero at
// initialisation (the seed changes nothing when it germinates).
//
// Shapes are symbolic: the batch is N, spatial extents are L (conv1d) or H
// and W (conv2d), and a strided conv turns H into floor((H+c)/s). Two shapes
// are equal only when they agree for every input size, so a seed that
// matches its host's output shape does so for any image size. "(*, C)" means
// any number of leading dims followed by C features. FLOPs per sample are
// evaluated at the host's spatial extents (Host.Spatial), or at 32 per
// spatial dim when the host gives none; for last-dim hosts a "sample" is one
// feature vector (one token).
//
// Parse is strict (unknown fields, duplicate keys, wrong types and oversize
// documents are errors) and canonical ids come from package canon, shared
// with Urza.
//
// All functions are safe for concurrent use: the op table and template
// library are read-only, and an *IR is a plain value the caller owns (do not
// mutate one while another goroutine reads it). Randomness for Mutate is
// passed in by the caller.
package blueprint
