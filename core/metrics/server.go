package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Server is a promhttp endpoint serving one Set at /metrics.
type Server struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// Serve starts serving the Set's metrics over HTTP at
// http://host:port/metrics and returns the bound address (port 0 picks a
// free port). host is required: callers pass "127.0.0.1" unless the user
// asked for another interface. A Set serves at most once at a time
// (ErrServing); Close stops it.
func (s *Set) Serve(host string, port int) (net.Addr, error) {
	if host == "" {
		return nil, fmt.Errorf("metrics: serve: an explicit host is required (127.0.0.1 for loopback): %w", ErrListen)
	}
	if port < 0 || port > 65535 {
		return nil, fmt.Errorf("metrics: serve: port %d must be in [0, 65535]: %w", port, ErrListen)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server != nil {
		return nil, fmt.Errorf("metrics: serve: already serving on %s (one endpoint per run): %w", s.server.ln.Addr(), ErrServing)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("metrics: serve: listen on %s port %d: %v: %w", host, port, err, ErrListen)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}))
	srv := &Server{ln: ln, done: make(chan struct{}),
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}}
	go srv.run()
	s.server = srv
	return ln.Addr(), nil
}

// run serves until Close; a panic in the server goroutine is logged, never
// allowed to take the process (and its Python host) down.
func (srv *Server) run() {
	defer close(srv.done)
	defer func() {
		if r := recover(); r != nil {
			slog.Error("esper metrics: server stopped after a panic", "panic", r)
		}
	}()
	if err := srv.srv.Serve(srv.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		slog.Warn("esper metrics: server stopped", "err", err)
	}
}

// Close stops the server and waits for its goroutine (at most 5 s for
// requests in flight).
func (srv *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.srv.Shutdown(ctx)
	<-srv.done
	if err != nil {
		return fmt.Errorf("metrics: close server: %w", err)
	}
	return nil
}

// Addr returns the address the Set serves on, or nil.
func (s *Set) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.server == nil {
		return nil
	}
	return s.server.ln.Addr()
}
