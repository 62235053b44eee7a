package urza

import "math"

// TrainFLOPsFactor is the training cost of a sample in forwards: the
// forward plus the backward, about twice the forward.
const TrainFLOPsFactor = 3

// TrainFLOPs is the one estimate of training FLOPs: TrainFLOPsFactor x
// flopsPerSample (a forward of one sample, Karn's count) x samples,
// saturating at math.MaxInt64. Negative arguments count as 0. It defines
// StateSpan.TrainFLOPs and the run's training FLOPs in the epoch events
// (core/session).
func TrainFLOPs(flopsPerSample, samples int64) int64 {
	if flopsPerSample <= 0 || samples <= 0 {
		return 0
	}
	if flopsPerSample > math.MaxInt64/TrainFLOPsFactor/samples {
		return math.MaxInt64
	}
	return TrainFLOPsFactor * flopsPerSample * samples
}
