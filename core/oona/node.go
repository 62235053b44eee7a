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
}

// Node is one run's bus with its run log, the unit the C ABI hands out.
type Node struct {
	// Bus is the run's bus; Log writes its events to the run directory.
	Bus *Bus
	Log *RunLog
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
	// Log is the run log's.
	Log LogStats `json:"log"`
}

// Stats returns the bus's and the run log's counts.
func (n *Node) Stats() NodeStats { return NodeStats{Stats: n.Bus.Stats(), Log: n.Log.Stats()} }

// Close closes the bus, then waits at most timeout for the run log to
// write what it holds and close. It may be called again.
func (n *Node) Close(timeout time.Duration) error {
	n.Bus.Close()
	return n.Log.Close(timeout)
}
