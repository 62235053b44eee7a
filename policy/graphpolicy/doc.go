// Package graphpolicy is Simic's graph policy at decision time (DESIGN §6,
// step 2; docs/simic.md "Graph policy in Go"): the layer graph a session
// builds (Graph), its encoding as the network's input (Encode, the one
// definition the PyTorch trainer also reads), the trained network's model
// folder (Load) and the deterministic decision on a graph (Decide: the
// masked argmax of each factored head). The decision is only proposed: the
// session carries it out through the lifecycle's gates and the governor.
package graphpolicy
