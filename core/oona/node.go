package oona

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// NodeConfig configures a Node: the bus and its run log. It is the JSON
// given to esper_oona_new.
type NodeConfig struct {
	// Run and Rank configure the bus (see Config).
	Run  string `json:"run"`
	Rank int    `json:"rank"`
	// Home is the runs root: the run log goes to <Home>/<Run>/. Required
	// (RunsRoot gives the default, $ESPER_HOME/runs).
	Home string `json:"home"`
	// Log configures the run log (its Dir is set from Home and Run).
	Log LogConfig `json:"log"`
	// NATS, when present, configures the NATS transport (package
	// natsink decodes it); null or absent: none.
	NATS json.RawMessage `json:"nats,omitempty"`
}

// Transport is a subscriber that carries a bus's events elsewhere (see
// package natsink). A Node closes its transports after its bus.
type Transport interface {
	// Close gives the transport's backlog at most timeout, then releases it.
	Close(timeout time.Duration)
	// TransportStats returns its counts (encoded as JSON in NodeStats).
	TransportStats() any
}

// Node is one run's bus with its run log, the unit the C ABI hands out.
type Node struct {
	// Bus is the run's bus; Log writes its events to the run directory.
	Bus *Bus
	Log *RunLog
	// NATS is the NATS transport, or nil (set once, before the node is
	// shared).
	NATS Transport
}

// RunsRoot returns the runs root for an ESPER_HOME value: home/runs, with
// "" meaning ~/.esper (as Urza's store is home/urza).
func RunsRoot(home string) (string, error) {
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("oona: runs root: %v: %w", err, ErrConfig)
		}
		home = filepath.Join(h, ".esper")
	}
	return filepath.Join(home, "runs"), nil
}

// ParseNodeConfig decodes a node configuration strictly (unknown fields
// and trailing data are errors wrapping ErrConfig).
func ParseNodeConfig(data []byte) (NodeConfig, error) {
	var c NodeConfig
	if len(data) > 1<<20 {
		return c, fmt.Errorf("oona: config is %d bytes, limit 1 MiB: %w", len(data), ErrConfig)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("oona: config: %v: %w", err, ErrConfig)
	}
	if dec.More() {
		return c, fmt.Errorf("oona: config: trailing data: %w", ErrConfig)
	}
	return c, nil
}

// OpenNode starts a bus for cfg and opens its run log in <Home>/<Run>.
func OpenNode(cfg NodeConfig, opts ...Option) (*Node, error) {
	if cfg.Home == "" {
		return nil, fmt.Errorf("oona: node: home (the runs root) is required: %w", ErrConfig)
	}
	b, err := New(Config{Run: cfg.Run, Rank: cfg.Rank}, opts...)
	if err != nil {
		return nil, err
	}
	lc := cfg.Log
	lc.Dir = filepath.Join(cfg.Home, cfg.Run)
	l, err := OpenRunLog(b, lc)
	if err != nil {
		b.Close()
		return nil, err
	}
	return &Node{Bus: b, Log: l}, nil
}

// NodeStats is a node's counts.
type NodeStats struct {
	Stats
	// Log is the run log's; NATS the NATS transport's (absent without one).
	Log  LogStats `json:"log"`
	NATS any      `json:"nats,omitempty"`
}

// Stats returns the bus's, the run log's and the transport's counts.
func (n *Node) Stats() NodeStats {
	st := NodeStats{Stats: n.Bus.Stats(), Log: n.Log.Stats()}
	if n.NATS != nil {
		st.NATS = n.NATS.TransportStats()
	}
	return st
}

// MaxTransportClose bounds the time a transport's backlog gets at Close
// (a server that is down must not hold up the end of a run).
const MaxTransportClose = 3 * time.Second

// Close closes the bus, then waits at most timeout for the run log to
// write what it holds and close, and gives the transport at most
// min(timeout, MaxTransportClose) for its backlog. It may be called again.
func (n *Node) Close(timeout time.Duration) error {
	n.Bus.Close()
	err := n.Log.Close(timeout)
	if n.NATS != nil {
		n.NATS.Close(min(timeout, MaxTransportClose))
	}
	return err
}
