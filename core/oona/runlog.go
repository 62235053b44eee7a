package oona

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults and limits of LogConfig.
const (
	// DefaultMaxBytes is the size at which the run log rotates (64 MiB).
	DefaultMaxBytes = 64 << 20
	// MinMaxBytes is the smallest rotation size accepted.
	MinMaxBytes = 4096
	// DefaultKeep is the number of rotated files kept.
	DefaultKeep = 4
	// MaxKeep bounds the rotated files kept.
	MaxKeep = 1000
	// DefaultLogBuffer is the run log's subscriber buffer (events).
	DefaultLogBuffer = 8192
)

// LogConfig configures a RunLog. Zero values mean the defaults.
type LogConfig struct {
	// Dir is the run's directory ($ESPER_HOME/runs/<run>); created if
	// needed. Required.
	Dir string `json:"dir"`
	// MaxBytes is the size at which the current file is rotated: a line
	// that would take it past MaxBytes goes to a fresh file (a single line
	// larger than MaxBytes gets a file of its own). Default 64 MiB, at
	// least 4096.
	MaxBytes int64 `json:"max_bytes,omitempty"`
	// Keep is the number of rotated files kept (events.1.jsonl the newest,
	// events.<Keep>.jsonl the oldest; older ones are deleted). The log
	// thus holds at most about (Keep + 1) x MaxBytes. Default 4, in [0,
	// 1000]; a negative value means 0 (only the current file).
	Keep int `json:"keep,omitempty"`
	// Buffer is the writer's subscriber buffer, in events: events
	// published while it is full (the disk stalled that long) are dropped
	// from the log and counted. Default 8192 (64 KiB of pointers; an
	// Esper run publishes a few events a second).
	Buffer int `json:"buffer,omitempty"`
}

// LogBase returns the file name stem of a rank's log: "events" for rank
// 0, "events.rank<k>" for rank k. The current file is <stem>.jsonl, the
// rotated ones <stem>.<n>.jsonl.
func LogBase(rank int) string {
	if rank == 0 {
		return "events"
	}
	return "events.rank" + strconv.Itoa(rank)
}

// LogStats is a run log's counts.
type LogStats struct {
	// Path is the current file.
	Path string `json:"path"`
	// Lines and Bytes count what was written by this RunLog (all files).
	Lines int64 `json:"lines"`
	Bytes int64 `json:"bytes"`
	// Rotations counts rotations; Syncs counts fsyncs.
	Rotations int64 `json:"rotations"`
	Syncs     int64 `json:"syncs"`
	// Dropped counts events the log missed because its buffer was full;
	// Lost counts lines a failed write lost.
	Dropped int64 `json:"dropped"`
	Lost    int64 `json:"lost"`
	// Error is the first write error ("" when none).
	Error string `json:"error,omitempty"`
}

// RunLog appends a bus's events to the run's JSON-lines log (see the
// package doc and docs/events.md).
type RunLog struct {
	// Set at Open and never changed.
	cfg  LogConfig
	base string
	sub  *Subscription
	wake chan struct{} // the writer is asked to write (and fsync) now
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the writer has closed the file

	lines, bytes, rotations, syncs, lost atomic.Int64
	firstErr                             atomic.Pointer[string]

	// tick wakes the writer every WriteEvery while events come (armed
	// says it runs): the writer stops it at a tick that finds no event
	// delivered since the one before, and the subscription's OnFirst hook
	// starts it again when an event lands in the empty buffer. wakes
	// counts the writer's wakes by it (tests).
	tick  *time.Ticker
	armed atomic.Bool
	wakes atomic.Int64

	// wmu guards the file and the taking of events from the subscription:
	// an event leaves the subscription's buffer only under wmu and is
	// written before wmu is released, so whoever takes wmu after an event
	// was published finds it in the file or still in the buffer. The
	// writer goroutine holds it while it writes, Flush while it writes in
	// its caller's goroutine.
	wmu      sync.Mutex
	f        *os.File
	w        *bufio.Writer
	size     int64
	lastSync time.Time
	syncDue  bool // a line written by Flush asked for an fsync: the writer does it
	finished bool // the file is closed (Close, or the bus closed)

	closeOnce sync.Once
	closeErr  error
}

// OpenRunLog opens (creating or appending to) the run log of b's rank in
// cfg.Dir and subscribes it to b. A file whose last line was cut by a
// crash gets the newline it lacks first, so the next line starts clean.
func OpenRunLog(b *Bus, cfg LogConfig) (*RunLog, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("oona: run log: dir is required: %w", ErrConfig)
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxBytes < MinMaxBytes {
		return nil, fmt.Errorf("oona: run log: max_bytes %d must be at least %d: %w", cfg.MaxBytes, MinMaxBytes, ErrConfig)
	}
	switch {
	case cfg.Keep == 0:
		cfg.Keep = DefaultKeep
	case cfg.Keep < 0:
		cfg.Keep = 0
	case cfg.Keep > MaxKeep:
		return nil, fmt.Errorf("oona: run log: keep %d must be at most %d: %w", cfg.Keep, MaxKeep, ErrConfig)
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = DefaultLogBuffer
	}
	if cfg.Buffer < 1 || cfg.Buffer > MaxBuffer {
		return nil, fmt.Errorf("oona: run log: buffer %d must be in [1, %d]: %w", cfg.Buffer, MaxBuffer, ErrConfig)
	}
	l := &RunLog{cfg: cfg, base: LogBase(b.Rank()), wake: make(chan struct{}, 1), stop: make(chan struct{}),
		done: make(chan struct{})}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("oona: run log: create %s: %v: %w", cfg.Dir, err, ErrIO)
	}
	if err := l.open(); err != nil {
		return nil, err
	}
	sub, err := b.Subscribe("runlog", cfg.Buffer)
	if err != nil {
		_ = l.f.Close()
		return nil, fmt.Errorf("oona: run log: %w", err)
	}
	l.sub = sub
	l.tick = time.NewTicker(WriteEvery)
	l.tick.Stop()
	sub.OnFirst(l.arm)
	go l.run()
	return l, nil
}

// Path returns the current file's path.
func (l *RunLog) Path() string { return l.file(0) }

// file returns the path of the current file (n = 0) or of rotated file n.
func (l *RunLog) file(n int) string {
	if n == 0 {
		return filepath.Join(l.cfg.Dir, l.base+".jsonl")
	}
	return filepath.Join(l.cfg.Dir, l.base+"."+strconv.Itoa(n)+".jsonl")
}

// open opens the current file for appending and terminates a cut last
// line.
func (l *RunLog) open() error {
	path := l.file(0)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("oona: run log: open %s: %v: %w", path, err, ErrIO)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("oona: run log: stat %s: %v: %w", path, err, ErrIO)
	}
	size := st.Size()
	if size > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, size-1); err != nil && err != io.EOF {
			_ = f.Close()
			return fmt.Errorf("oona: run log: read %s: %v: %w", path, err, ErrIO)
		}
		if last[0] != '\n' {
			if _, err := f.Write([]byte{'\n'}); err != nil {
				_ = f.Close()
				return fmt.Errorf("oona: run log: repair %s: %v: %w", path, err, ErrIO)
			}
			size++
		}
	}
	l.f, l.size = f, size
	if l.w == nil {
		l.w = bufio.NewWriterSize(f, 64<<10)
	} else {
		l.w.Reset(f)
	}
	return nil
}

// WriteEvery is how long an event may wait in the run log's buffer before
// the writer hands it to the operating system, unless Flush (every
// Morphogenesis.end_epoch), Close, or a buffer half full writes it sooner.
// Waking the writer for every event cost more than the write itself at
// every end of epoch (docs/performance.md); its clock stops while no event
// comes, so an idle run (or one between long epochs) does not wake.
const WriteEvery = 100 * time.Millisecond

// arm starts the writer's clock (OnFirst: an event landed in the empty
// buffer), unless it runs already. Starting a clock wakes the thread that
// waits for the next timer; a clock kept running while events come (a
// run of short epochs) costs one wake per WriteEvery instead of one per
// burst.
func (l *RunLog) arm() {
	if l.armed.CompareAndSwap(false, true) {
		l.tick.Reset(WriteEvery)
	}
}

// idle stops the clock at a tick that found no event delivered since the
// tick before (seen is that count). It is stopped first, then marked: an
// event that lands in between found it marked and did not start it, so
// an event still waiting after the mark starts it again here.
func (l *RunLog) idle(seen *int64) {
	n := l.sub.delivered.Load()
	if n != *seen {
		*seen = n
		return
	}
	l.tick.Stop()
	l.armed.Store(false)
	if len(l.sub.ch) > 0 {
		l.arm()
	}
}

// run is the writer goroutine: every WriteEvery while events come (its
// clock stops when none came for a tick, and starts again with the next),
// when the subscription's buffer is half full, and when Flush asks for an
// fsync, it writes the events waiting, hands them to the operating
// system, and fsyncs when one of them asks for it (see write). An idle
// bus does not wake it. It closes the file at Close, or when the bus
// closes.
func (l *RunLog) run() {
	defer close(l.done)
	defer l.tick.Stop()
	seen := int64(0)
	for {
		select {
		case <-l.tick.C:
			l.wakes.Add(1)
			l.idle(&seen)
		case <-l.wake:
		case <-l.sub.HalfFull():
		case <-l.stop:
		}
		l.wmu.Lock()
		sync, open := l.drain()
		sync = sync || l.syncDue
		l.syncDue = false
		stopping := !open
		select {
		case <-l.stop:
			stopping = true
		default:
		}
		if stopping {
			for open { // Close: the subscription is closed; write what it still holds
				var more bool
				more, open = l.drain()
				sync = sync || more
			}
			l.finish()
			l.finished = true
			l.wmu.Unlock()
			return
		}
		l.flush(sync)
		l.wmu.Unlock()
	}
}

// drain writes the events already buffered (under wmu); sync reports
// whether one of them asks for an fsync, open is false when the channel
// was closed.
func (l *RunLog) drain() (sync, open bool) {
	for {
		select {
		case ev, ok := <-l.sub.C():
			if !ok {
				return sync, false
			}
			sync = l.write(ev) || sync
		default:
			return sync, true
		}
	}
}

// write appends one event's line, rotating first when the line would take
// the file past MaxBytes; it reports whether the event asks for an fsync
// (run events; epoch events SyncEvery after the last fsync).
func (l *RunLog) write(ev *Event) bool {
	line := ev.Line()
	if l.size > 0 && l.size+int64(len(line)) > l.cfg.MaxBytes {
		l.rotate()
	}
	if l.f == nil {
		l.lost.Add(1)
		return false
	}
	if _, err := l.w.Write(line); err != nil {
		l.fail(fmt.Errorf("oona: run log: write %s: %v: %w", l.file(0), err, ErrIO))
		l.lost.Add(1)
		return false
	}
	l.size += int64(len(line))
	l.lines.Add(1)
	l.bytes.Add(int64(len(line)))
	return ev.Kind == KindRun || ev.Kind == KindEpoch && time.Since(l.lastSync) >= SyncEvery
}

// SyncEvery is the least time between two fsyncs for epoch events (runs of
// short epochs would otherwise fsync many times a second); run events,
// rotations and Close always fsync.
const SyncEvery = time.Second

// flush hands the buffered lines to the operating system (so a killed
// process loses none of them) and, with sync, fsyncs the file.
func (l *RunLog) flush(sync bool) {
	if l.f == nil {
		return
	}
	if err := l.w.Flush(); err != nil {
		l.fail(fmt.Errorf("oona: run log: flush %s: %v: %w", l.file(0), err, ErrIO))
		// The buffered lines are lost; start the next burst clean.
		l.w.Reset(l.f)
		return
	}
	if sync {
		if err := l.f.Sync(); err != nil {
			l.fail(fmt.Errorf("oona: run log: sync %s: %v: %w", l.file(0), err, ErrIO))
			return
		}
		l.lastSync = time.Now()
		l.syncs.Add(1)
	}
}

// rotate closes the current file, shifts the rotated ones (deleting the
// oldest beyond Keep) and opens a fresh current file.
func (l *RunLog) rotate() {
	l.flush(true)
	if err := l.f.Close(); err != nil {
		l.fail(fmt.Errorf("oona: run log: close %s: %v: %w", l.file(0), err, ErrIO))
	}
	l.f = nil
	if l.cfg.Keep == 0 {
		if err := os.Remove(l.file(0)); err != nil && !os.IsNotExist(err) {
			l.fail(fmt.Errorf("oona: run log: rotate %s: %v: %w", l.file(0), err, ErrIO))
		}
	} else {
		if err := os.Remove(l.file(l.cfg.Keep)); err != nil && !os.IsNotExist(err) {
			l.fail(fmt.Errorf("oona: run log: rotate %s: %v: %w", l.file(l.cfg.Keep), err, ErrIO))
		}
		for n := l.cfg.Keep - 1; n >= 0; n-- {
			if err := os.Rename(l.file(n), l.file(n+1)); err != nil && !os.IsNotExist(err) {
				l.fail(fmt.Errorf("oona: run log: rotate %s: %v: %w", l.file(n), err, ErrIO))
			}
		}
	}
	if err := l.open(); err != nil {
		l.fail(err)
		return
	}
	l.rotations.Add(1)
}

// finish flushes, fsyncs and closes the file (the writer's last act).
func (l *RunLog) finish() {
	l.flush(true)
	if l.f != nil {
		if err := l.f.Close(); err != nil {
			l.fail(fmt.Errorf("oona: run log: close %s: %v: %w", l.file(0), err, ErrIO))
		}
		l.f = nil
	}
}

func (l *RunLog) fail(err error) {
	if l.firstErr.CompareAndSwap(nil, ptr(err.Error())) {
		slog.Warn("esper oona: run log write failed; the log may miss events", "err", err)
	}
}

func (l *RunLog) err() error {
	if p := l.firstErr.Load(); p != nil {
		return fmt.Errorf("%s: %w", *p, ErrIO)
	}
	return nil
}

func ptr[T any](v T) *T { return &v }

// Flush writes every event published before the call and hands it to the
// operating system (a killed process then keeps it), in the caller's
// goroutine: no handoff to the writer. An fsync one of them asks for is
// left to the writer goroutine, so the caller never waits on the disk's
// sync. When the writer holds the file (a write or an fsync in progress),
// Flush waits for it at most timeout: ErrTimeout then (nothing is lost: the
// events are written with the writer's next burst). It returns ErrClosed
// after Close, and the first write error if one happened.
func (l *RunLog) Flush(timeout time.Duration) error {
	if l.wmu.TryLock() {
		defer l.wmu.Unlock()
		return l.flushLocked()
	}
	reply := make(chan error, 1)
	go func() {
		l.wmu.Lock()
		defer l.wmu.Unlock()
		reply <- l.flushLocked()
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-reply:
		return err
	case <-t.C:
		return fmt.Errorf("oona: run log flush: the writer did not let go of the file in %v: %w", timeout, ErrTimeout)
	}
}

// flushLocked is Flush's work, under wmu.
func (l *RunLog) flushLocked() error {
	if l.finished {
		return fmt.Errorf("oona: run log flush: %w", ErrClosed)
	}
	sync, _ := l.drain() // a closed channel: the writer finishes the file at its next wake
	l.flush(false)
	if sync {
		l.syncDue = true
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	return l.err()
}

// Close unsubscribes the log, writes the events still buffered, fsyncs and
// closes the file, waiting at most timeout for the writer (ErrTimeout
// then: the writer finishes on its own). It returns the first write error.
// It may be called again.
func (l *RunLog) Close(timeout time.Duration) error {
	l.closeOnce.Do(func() {
		l.sub.Close()
		close(l.stop)
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-l.done:
			l.closeErr = l.err()
		case <-t.C:
			l.closeErr = fmt.Errorf("oona: run log close: the writer did not finish in %v: %w", timeout, ErrTimeout)
		}
	})
	return l.closeErr
}

// Stats returns the log's counts.
func (l *RunLog) Stats() LogStats {
	st := LogStats{Path: l.file(0), Lines: l.lines.Load(), Bytes: l.bytes.Load(), Rotations: l.rotations.Load(),
		Syncs: l.syncs.Load(), Dropped: l.sub.Stats().Dropped, Lost: l.lost.Load()}
	if p := l.firstErr.Load(); p != nil {
		st.Error = *p
	}
	return st
}
