// Package value is Tamiyo's value model (DESIGN §6, step 1; docs/simic.md):
// the features of a candidate germination, the target it is trained to
// predict (its contribution per unit of compute), the rows of a training set
// built from Urza's outcome records, and the trained network that predicts
// the target for live candidates.
//
// One definition serves training and decisions: a Candidate is built from
// an outcome record (FromOutcome) or by Tamiyo from its observation and a
// candidate blueprint, and Features turns either into the same vector.
package value
