package nissa

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"sync"
	"time"
)

// Logger writes JSON-lines records to a caller's io.Writer, one record per
// line and per Write call:
//
//	{"time":"2025-01-02T03:04:05.123Z","kind":"signals","step":120,"data":{...}}
//
// kind is "signals" (data: {"train_loss_mean", "nonfinite_count", "layers":
// [[act_mean, act_var, dead_frac, grad_norm, weight_norm, eff_rank, seed_gain], ...]},
// null for NaN or infinite values) or whatever the caller passes to Record
// ("event", "decision", ...; data is the payload encoded with
// encoding/json). A Logger is safe for concurrent use.
type Logger struct {
	now func() time.Time

	// mu guards w, buf and lines.
	mu    sync.Mutex
	w     io.Writer
	buf   []byte
	lines int64
}

// LoggerOption configures a Logger.
type LoggerOption func(*Logger)

// WithClock makes the logger stamp records with now() instead of
// time.Now() (tests use a fixed clock).
func WithClock(now func() time.Time) LoggerOption {
	return func(l *Logger) { l.now = now }
}

// NewLogger returns a logger writing to w. The caller keeps ownership of w
// (the logger never closes it).
func NewLogger(w io.Writer, opts ...LoggerOption) *Logger {
	l := &Logger{w: w, now: time.Now}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Lines returns the number of records written so far.
func (l *Logger) Lines() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lines
}

func (l *Logger) headerLocked(kind string, step int64) {
	l.buf = append(l.buf[:0], `{"time":"`...)
	l.buf = l.now().UTC().AppendFormat(l.buf, time.RFC3339Nano)
	l.buf = append(l.buf, `","kind":`...)
	l.buf = strconv.AppendQuote(l.buf, kind)
	l.buf = append(l.buf, `,"step":`...)
	l.buf = strconv.AppendInt(l.buf, step, 10)
	l.buf = append(l.buf, `,"data":`...)
}

func (l *Logger) writeLocked(kind string) error {
	l.buf = append(l.buf, "}\n"...)
	if _, err := l.w.Write(l.buf); err != nil {
		return fmt.Errorf("nissa: log %s: %v: %w", kind, err, ErrLogWrite)
	}
	l.lines++
	return nil
}

// Signals writes one "signals" record for a signals buffer measured at step
// (any length: 2 globals, then groups of 6 per layer; a trailing partial
// group is written as a shorter last row).
func (l *Logger) Signals(step int64, buf []float32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.headerLocked("signals", step)
	l.buf = append(l.buf, '{')
	for g := 0; g < NumGlobals; g++ {
		if g > 0 {
			l.buf = append(l.buf, ',')
		}
		l.buf = strconv.AppendQuote(l.buf, Global(g).String())
		l.buf = append(l.buf, ':')
		if g < len(buf) {
			l.buf = appendNum(l.buf, buf[g])
		} else {
			l.buf = append(l.buf, "null"...)
		}
	}
	l.buf = append(l.buf, `,"layers":[`...)
	for i := NumGlobals; i < len(buf); i++ {
		k := (i - NumGlobals) % NumSignals
		switch {
		case k == 0 && i > NumGlobals:
			l.buf = append(l.buf, "],["...)
		case k == 0:
			l.buf = append(l.buf, '[')
		default:
			l.buf = append(l.buf, ',')
		}
		l.buf = appendNum(l.buf, buf[i])
	}
	if len(buf) > NumGlobals {
		l.buf = append(l.buf, ']')
	}
	l.buf = append(l.buf, "]}"...)
	return l.writeLocked("signals")
}

// Record writes one record of the given kind with payload encoded as its
// data. A payload encoding/json refuses is an error and nothing is written.
func (l *Logger) Record(kind string, step int64, payload any) error {
	data, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("nissa: log %s: encode: %w", kind, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.headerLocked(kind, step)
	l.buf = append(l.buf, data...)
	return l.writeLocked(kind)
}

func appendNum(b []byte, v float32) []byte {
	f := float64(v)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, "null"...)
	}
	return strconv.AppendFloat(b, f, 'g', -1, 32)
}
