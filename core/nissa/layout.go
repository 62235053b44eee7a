package nissa

import "strconv"

// Signal indexes the six per-layer signals, in buffer order.
type Signal uint8

// The per-layer signals.
const (
	// ActMean is the mean of the layer's output activations.
	ActMean Signal = iota
	// ActVar is the variance of the layer's output activations.
	ActVar
	// DeadFrac is the fraction of output units that never activated.
	DeadFrac
	// GradNorm is the norm of the gradient at the layer's output.
	GradNorm
	// WeightNorm is the norm of the layer's weight.
	WeightNorm
	// EffRank is an effective-rank estimate of the layer's activations.
	EffRank
	// SeedGain is the first-order rate at which a new seed at the layer
	// could lower the loss: the norm of the loss gradient with respect to
	// the zero output weights of a probe branch of random ReLU features of
	// the layer's input (docs/internals.md).
	SeedGain

	// NumSignals is the number of per-layer signals.
	NumSignals = 7
)

// Global indexes the two global signals at the head of the buffer.
type Global uint8

// The global signals.
const (
	// TrainLossMean is the mean training loss over the steps since the last
	// flush.
	TrainLossMean Global = iota
	// NonfiniteCount counts non-finite losses or outputs seen since the last
	// flush.
	NonfiniteCount

	// NumGlobals is the number of global signals.
	NumGlobals = 2
)

var signalNames = [NumSignals]string{"act_mean", "act_var", "dead_frac", "grad_norm", "weight_norm", "eff_rank", "seed_gain"}

var globalNames = [NumGlobals]string{"train_loss_mean", "nonfinite_count"}

// String returns the signal's name as in docs/internals.md, e.g. "grad_norm".
func (s Signal) String() string {
	if s < NumSignals {
		return signalNames[s]
	}
	return "Signal(" + strconv.Itoa(int(s)) + ")"
}

// String returns the global's name, e.g. "train_loss_mean".
func (g Global) String() string {
	if g < NumGlobals {
		return globalNames[g]
	}
	return "Global(" + strconv.Itoa(int(g)) + ")"
}

// Len returns the length of a signals buffer for the given number of layers:
// 2 + 6 * layers.
func Len(layers int) int { return NumGlobals + NumSignals*layers }

// Index returns the buffer index of signal sig of layer.
func Index(layer int, sig Signal) int { return NumGlobals + NumSignals*layer + int(sig) }
