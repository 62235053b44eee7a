package urza

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// The root user of the test S3 server.
const (
	s3Access = "esper-test-access"
	s3Secret = "esper-test-secret-key"
)

// S3Server is a real S3-compatible server (versitygw, built by `make
// s3-server` into build/bin/esper-s3) serving a temporary directory on a
// loopback port: no mock.
type S3Server struct {
	t    testing.TB
	bin  string
	addr string // 127.0.0.1:port
	dir  string // the served directory: one folder per bucket
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd exits
}

// S3ServerBin finds the server binary: $ESPER_S3_SERVER, else
// build/bin/esper-s3 of this source tree.
func S3ServerBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("ESPER_S3_SERVER"); p != "" {
		return p
	}
	p, err := filepath.Abs(filepath.Join("..", "..", "build", "bin", "esper-s3"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("the S3 test server is not built (%v): run `make s3-server` (versitygw, pinned in tools/s3server/go.mod)", err)
	}
	return p
}

// StartS3 starts a server on a free loopback port, stopped when the test
// ends.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s := &S3Server{t: t, bin: S3ServerBin(t), addr: addr, dir: t.TempDir()}
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start runs the server and waits until it accepts connections. Its posix
// backend keeps an object's metadata (the ETag) in extended attributes set
// on the file before it is renamed into place, so a read returns a body and
// its ETag together; with --sidecar metadata it does not, and two writers
// racing on index.json lose entries (measured: 3 to 4 of 24), which
// TestS3IndexTwoWriters detects.
func (s *S3Server) Start() {
	s.t.Helper()
	cmd := exec.Command(s.bin, "--access", s3Access, "--secret", s3Secret, "--port", s.addr, "--quiet",
		"posix", s.dir)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start the S3 server %s: %v", s.bin, err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.done)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.done:
			s.cmd = nil
			s.t.Fatalf("the S3 server exited before listening on %s (%v)", s.addr, cmd.ProcessState)
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			s.t.Fatalf("the S3 server did not listen on %s within 20 s: %v", s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (SIGKILL: a crash, not a shutdown) and waits for it.
func (s *S3Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
	s.cmd = nil
}

// Env returns the store's configuration as the environment gives it.
func (s *S3Server) Env(name string) string {
	switch name {
	case "ESPER_S3_ENDPOINT":
		return "http://" + s.addr
	case "AWS_ACCESS_KEY_ID":
		return s3Access
	case "AWS_SECRET_ACCESS_KEY":
		return s3Secret
	case "AWS_REGION":
		return "us-east-1"
	}
	return ""
}

// ObjectPath is where the server keeps an object of the store at
// s3://bucket/prefix.
func (s *S3Server) ObjectPath(bucket, prefix, key string) string {
	return filepath.Join(s.dir, bucket, filepath.FromSlash(prefix), filepath.FromSlash(key))
}

func (s *S3Server) String() string { return fmt.Sprintf("versitygw on %s serving %s", s.addr, s.dir) }
