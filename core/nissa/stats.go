package nissa

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/stat"
)

// Default values of Config.
const (
	// DefaultWindow is the number of recent measurements per series the
	// windowed statistics cover.
	DefaultWindow = 64
	// DefaultEWMA is the smoothing factor of the moving average.
	DefaultEWMA = 0.1
	// MaxWindow bounds Config.Window.
	MaxWindow = 1 << 16
	// MaxValues bounds the ring buffers: Len(Layers) x Window measurements
	// of 12 bytes each (a float32 and its int64 step), so at most 48 MiB.
	MaxValues = 1 << 22
	// MaxLayers bounds Config.Layers.
	MaxLayers = 1 << 20
)

// Config sizes a Stats. The zero value of each field means its default.
type Config struct {
	// Layers is the number of wrapped layers, >= 0 (the buffer holds
	// 2 + 6 * Layers floats).
	Layers int
	// Window is the number of recent measurements, per layer and signal,
	// that mean, variance and slope are computed over. Default 64, at most
	// 65536, at least 2.
	Window int
	// EWMA is the smoothing factor a in (0, 1] of the moving average
	// m <- m + a * (x - m); the first measurement initialises m. Default 0.1.
	EWMA float64
}

func (c Config) withDefaults() (Config, error) {
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.EWMA == 0 {
		c.EWMA = DefaultEWMA
	}
	switch {
	case c.Layers < 0 || c.Layers > MaxLayers:
		return c, fmt.Errorf("nissa: layers %d is not in [0, %d]: %w", c.Layers, MaxLayers, ErrConfig)
	case c.Window < 2 || c.Window > MaxWindow:
		return c, fmt.Errorf("nissa: window %d is not in [2, %d]: %w", c.Window, MaxWindow, ErrConfig)
	case !(c.EWMA > 0 && c.EWMA <= 1):
		return c, fmt.Errorf("nissa: ewma %v is not in (0, 1]: %w", c.EWMA, ErrConfig)
	case int64(Len(c.Layers))*int64(c.Window) > MaxValues:
		return c, fmt.Errorf("nissa: window %d x %d series (2 + 7 x %d layers) = %d measurements exceeds %d (%d MiB of buffers): use a smaller window: %w",
			c.Window, Len(c.Layers), c.Layers, int64(Len(c.Layers))*int64(c.Window), MaxValues, MaxValues*12>>20, ErrConfig)
	}
	return c, nil
}

// Validate checks c (defaults filled in) without allocating anything: New
// accepts exactly the configs Validate accepts.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// series is the running state of one signal of one layer (or one global).
// Its window lives in Stats.vals and Stats.steps at [i*window, (i+1)*window).
type series struct {
	head      int32 // next slot to write in the ring
	n         int32 // measurements in the ring, <= window
	total     int64 // finite measurements ever
	nonfinite int64 // infinite measurements ever (NaN is "not measured")
	ewma      float64
	last      float64
	lastStep  int64
}

// Stats holds rolling statistics of every signal of every layer. It is not
// safe for concurrent use.
type Stats struct {
	cfg     Config
	series  []series  // one per buffer index
	vals    []float32 // ring buffers, series-major
	steps   []int64   // the step of each value in vals
	ingests int64     // buffers ingested
	step    int64     // step of the last buffer ingested
	xs, ys  []float64 // scratch for Summary
}

// New returns an empty Stats for cfg.
func New(cfg Config) (*Stats, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	n := Len(cfg.Layers)
	return &Stats{
		cfg:    cfg,
		series: make([]series, n),
		vals:   make([]float32, n*cfg.Window),
		steps:  make([]int64, n*cfg.Window),
		xs:     make([]float64, cfg.Window),
		ys:     make([]float64, cfg.Window),
	}, nil
}

// Config returns the configuration with defaults filled in.
func (s *Stats) Config() Config { return s.cfg }

// Ingests returns the number of buffers ingested.
func (s *Stats) Ingests() int64 { return s.ingests }

// LastStep returns the step of the last buffer ingested.
func (s *Stats) LastStep() int64 { return s.step }

// Ingest records one signals buffer measured at step. The buffer must hold
// exactly Len(layers) floats and step must not go backwards; otherwise
// nothing is recorded and the error wraps ErrLayout. NaN entries are
// skipped, infinite ones are counted as non-finite. Ingest does not keep buf
// and does not allocate.
func (s *Stats) Ingest(step int64, buf []float32) error {
	if len(buf) != len(s.series) {
		return fmt.Errorf("nissa: signals buffer has %d floats, want %d (2 globals + %d x %d layers): %w",
			len(buf), len(s.series), NumSignals, s.cfg.Layers, ErrLayout)
	}
	if step < s.step {
		return fmt.Errorf("nissa: signals at step %d after step %d: %w", step, s.step, ErrLayout)
	}
	w := int32(s.cfg.Window)
	a := s.cfg.EWMA
	vals, steps := s.vals, s.steps
	ser := s.series[:len(buf)]
	for i, v := range buf {
		if v-v != 0 { // NaN or infinite
			if v == v {
				ser[i].nonfinite++
			}
			continue
		}
		p := &ser[i]
		off := i*int(w) + int(p.head)
		vals[off] = v
		steps[off] = step
		if p.head++; p.head == w {
			p.head = 0
		}
		if p.n < w {
			p.n++
		}
		x := float64(v)
		if p.total == 0 {
			p.ewma = x
		} else {
			p.ewma += a * (x - p.ewma)
		}
		p.total++
		p.last = x
		p.lastStep = step
	}
	s.ingests++
	s.step = step
	return nil
}

// Summary is the statistics of one series. Values that cannot be computed
// (no measurement yet, a variance of one sample, a slope with one step) are
// NaN.
type Summary struct {
	// N is the number of measurements in the window.
	N int
	// Total counts finite measurements ever; Nonfinite counts infinite ones.
	Total, Nonfinite int64
	// Mean and Var are the mean and the unbiased sample variance over the
	// window.
	Mean, Var float64
	// Slope is the least-squares slope of the window's values against their
	// steps, per step.
	Slope float64
	// EWMA is the exponentially weighted moving average of every
	// measurement.
	EWMA float64
	// Last is the latest measurement and LastStep its step.
	Last     float64
	LastStep int64
}

// Series returns the statistics of the series at buffer index i (see Index),
// or ok = false when i is out of range. It does not allocate.
func (s *Stats) Series(i int) (Summary, bool) {
	if i < 0 || i >= len(s.series) {
		return Summary{}, false
	}
	p := &s.series[i]
	nan := math.NaN()
	sum := Summary{N: int(p.n), Total: p.total, Nonfinite: p.nonfinite,
		Mean: nan, Var: nan, Slope: nan, EWMA: nan, Last: nan, LastStep: p.lastStep}
	if p.total == 0 || p.n == 0 {
		return sum, true
	}
	sum.EWMA, sum.Last = p.ewma, p.last
	n := int(p.n)
	w := s.cfg.Window
	base := i * w
	start := int(p.head) - n // oldest entry, chronologically first
	if start < 0 {
		start += w
	}
	xs, ys := s.xs[:n], s.ys[:n]
	x0 := s.steps[base+start]
	for k := 0; k < n; k++ {
		j := start + k
		if j >= w {
			j -= w
		}
		xs[k] = float64(s.steps[base+j] - x0)
		ys[k] = float64(s.vals[base+j])
	}
	if n == 1 {
		sum.Mean = ys[0]
	} else {
		sum.Mean, sum.Var = stat.MeanVariance(ys, nil)
		if xs[n-1] != xs[0] {
			_, sum.Slope = stat.LinearRegression(xs, ys, nil, false)
		}
	}
	return sum, true
}

// Layer returns the statistics of signal sig of layer (ok = false when
// either is out of range).
func (s *Stats) Layer(layer int, sig Signal) (Summary, bool) {
	if layer < 0 || layer >= s.cfg.Layers || sig >= NumSignals {
		return Summary{}, false
	}
	return s.Series(Index(layer, sig))
}

// LayerMean returns the window mean of signal sig of layer: Layer's
// Summary.Mean (the same value, bit for bit), NaN when nothing is in the
// window, without Layer's variance and slope (a graph reads only the mean
// of every layer's every signal). ok is false when either is out of range.
// It does not allocate.
func (s *Stats) LayerMean(layer int, sig Signal) (float64, bool) {
	if layer < 0 || layer >= s.cfg.Layers || sig >= NumSignals {
		return 0, false
	}
	i := Index(layer, sig)
	p := &s.series[i]
	if p.total == 0 || p.n == 0 {
		return math.NaN(), true
	}
	n, w := int(p.n), s.cfg.Window
	base, start := i*w, int(p.head)-n
	if start < 0 {
		start += w
	}
	ys := s.ys[:n]
	for k := range n {
		j := start + k
		if j >= w {
			j -= w
		}
		ys[k] = float64(s.vals[base+j])
	}
	if n == 1 {
		return ys[0], true
	}
	return stat.Mean(ys, nil), true
}

// Global returns the statistics of global signal g.
func (s *Stats) Global(g Global) (Summary, bool) {
	if g >= NumGlobals {
		return Summary{}, false
	}
	return s.Series(int(g))
}
