package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"fmt"
	"net"

	"github.com/esper-morph/esper/core/cache"
	"github.com/esper-morph/esper/core/session"
	"github.com/esper-morph/esper/core/urza"
)

// Metrics and alarm exports: translation only, see core/session/monitor.go
// and core/metrics.

//export esper_session_reports
func esper_session_reports(h C.uint64_t, out **C.char) C.int {
	return queryJSON(h, out, "out_json", (*session.Session).Reports)
}

//export esper_session_waiting
func esper_session_waiting(h C.uint64_t, outAlarms *C.int64_t, outReports *C.int32_t) C.int {
	return call(uint64(h), func() error {
		if outAlarms == nil || outReports == nil {
			return errNull("out_alarms and out_reports")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		return writeWaiting(s, outAlarms, outReports)
	})
}

// writeWaiting writes the session's waiting alarm and report counts.
func writeWaiting(s *session.Session, outAlarms *C.int64_t, outReports *C.int32_t) error {
	alarms, reports, err := s.Waiting()
	if err != nil {
		return err
	}
	*outAlarms, *outReports = C.int64_t(alarms), C.int32_t(min(reports, 1<<31-1))
	return nil
}

//export esper_session_metrics_text
func esper_session_metrics_text(h C.uint64_t, out **C.char) C.int {
	return call(uint64(h), func() error {
		if out == nil {
			return errNull("out_text")
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		b, err := s.MetricsText()
		if err != nil {
			return err
		}
		setString(out, string(b))
		return nil
	})
}

//export esper_session_serve_metrics
func esper_session_serve_metrics(h C.uint64_t, host *C.char, port C.int32_t, outPort *C.int32_t) C.int {
	return call(uint64(h), func() error {
		if outPort == nil {
			return errNull("out_port")
		}
		hostName, err := goString(host, "host")
		if err != nil {
			return err
		}
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		addr, err := s.ServeMetrics(hostName, int(port))
		if err != nil {
			return err
		}
		tcp, ok := addr.(*net.TCPAddr)
		if !ok {
			return fmt.Errorf("serve metrics: bound %s, not a TCP address", addr)
		}
		*outPort = C.int32_t(tcp.Port)
		return nil
	})
}

//export esper_session_metrics_attach
func esper_session_metrics_attach(h C.uint64_t, other C.uint64_t) C.int {
	return call(uint64(h), func() error {
		s, err := lookup[*session.Session](uint64(h))
		if err != nil {
			return err
		}
		if c, err := lookup[*cache.Cache](uint64(other)); err == nil {
			return s.AttachCache(c)
		}
		st, err := lookup[*urza.Store](uint64(other))
		if err != nil {
			return fmt.Errorf("metrics attach: handle %d is neither a kernel cache nor an Urza store: %w", uint64(other), err)
		}
		return s.AttachStore(st)
	})
}
