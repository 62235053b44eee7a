package natsink_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/esper-morph/esper/core/oona/natsink"
)

// startAuthServer starts a real nats-server with JetStream on loopback that
// requires the credentials set in opts (Username/Password or Authorization).
func startAuthServer(t *testing.T, opts server.Options) string {
	t.Helper()
	port := freePort(t)
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir, opts.NoSigs, opts.NoLog =
		"127.0.0.1", port, true, t.TempDir(), true, true
	s, err := server.NewServer(&opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(s.Shutdown)
	return fmt.Sprintf("nats://127.0.0.1:%d", port)
}

// The sink and the follower authenticate with the configured user and
// password or token; wrong or missing credentials send and receive
// nothing, and the sink's last error says why.
func TestSinkAndFollowerAuthenticate(t *testing.T) {
	servers := []struct {
		name        string
		opts        server.Options
		right, bad  natsink.Config
		missingAuth bool
	}{
		{"user and password", server.Options{Username: "esper", Password: "s3cret"},
			natsink.Config{User: "esper", Password: "s3cret"}, natsink.Config{User: "esper", Password: "wrong"}, true},
		{"token", server.Options{Authorization: "t0ken"},
			natsink.Config{Token: "t0ken"}, natsink.Config{Token: "wrong"}, true},
	}
	for _, c := range servers {
		t.Run(c.name, func(t *testing.T) {
			url := startAuthServer(t, c.opts)
			for _, side := range []struct {
				name string
				cfg  natsink.Config
				ok   bool
			}{{"right", c.right, true}, {"wrong", c.bad, false}, {"none", natsink.Config{}, false}} {
				side.cfg.URL = url
				b := newBus(t)
				s, err := natsink.Open(b, side.cfg)
				if err != nil {
					t.Fatalf("%s: %v", side.name, err)
				}
				publishN(t, b, 0, 5)
				if side.ok {
					waitSent(t, s, 5)
					f := follow(t, natsink.FollowConfig{Config: side.cfg, Run: "nats-run"})
					seqs, _ := collect(t, f, 5)
					wantSeqs(t, seqs, 1, 5)
				} else {
					deadline := time.Now().Add(10 * time.Second)
					for !strings.Contains(strings.ToLower(s.Stats().LastError), "authorization") && time.Now().Before(deadline) {
						time.Sleep(20 * time.Millisecond)
					}
					if st := s.Stats(); st.Sent != 0 || !strings.Contains(strings.ToLower(st.LastError), "authorization") {
						t.Fatalf("%s credentials: %+v", side.name, st)
					}
					f := follow(t, natsink.FollowConfig{Config: side.cfg, Run: "nats-run"})
					deadline = time.Now().Add(10 * time.Second)
					for !strings.Contains(strings.ToLower(f.Stats().LastError), "authorization") && time.Now().Before(deadline) {
						time.Sleep(20 * time.Millisecond)
					}
					if st := f.Stats(); st.Received != 0 || st.Mode != "" ||
						!strings.Contains(strings.ToLower(st.LastError), "authorization") {
						t.Fatalf("follower, %s credentials: %+v", side.name, st)
					}
				}
				s.Close(100 * time.Millisecond)
				b.Close()
			}
		})
	}
}

// writeTLS writes a CA, a server certificate for 127.0.0.1 and a client
// certificate (PEM) to dir; it returns the server's TLS configuration, which
// requires a client certificate signed by the CA.
func writeTLS(t *testing.T, dir string) *tls.Config {
	t.Helper()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	caKey := newKey()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "esper test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(serial int64, usage x509.ExtKeyUsage, name string) tls.Certificate {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		write(name+".pem", "CERTIFICATE", der)
		write(name+"-key.pem", "EC PRIVATE KEY", kder)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	srv := leaf(2, x509.ExtKeyUsageServerAuth, "server")
	leaf(3, x509.ExtKeyUsageClientAuth, "client")
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{Certificates: []tls.Certificate{srv}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert,
		MinVersion: tls.VersionTLS12}
}

// The sink and the follower connect over TLS with the configured CA and
// client certificate; without the client certificate nothing is sent.
func TestSinkAndFollowerOverTLS(t *testing.T) {
	dir := t.TempDir()
	url := startAuthServer(t, server.Options{TLS: true, TLSVerify: true, TLSConfig: writeTLS(t, dir), TLSTimeout: 2})
	url = "tls://" + strings.TrimPrefix(url, "nats://")
	right := natsink.Config{URL: url, CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "client.pem"),
		Key: filepath.Join(dir, "client-key.pem")}
	b := newBus(t)
	s, err := natsink.Open(b, right)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	publishN(t, b, 0, 5)
	waitSent(t, s, 5)
	f := follow(t, natsink.FollowConfig{Config: right, Run: "nats-run"})
	seqs, _ := collect(t, f, 5)
	wantSeqs(t, seqs, 1, 5)

	// The CA alone: the server asks for a client certificate and refuses the connection.
	b2 := newBus(t)
	s2, err := natsink.Open(b2, natsink.Config{URL: url, CA: right.CA})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close(10 * time.Millisecond)
	publishN(t, b2, 0, 2)
	deadline := time.Now().Add(10 * time.Second)
	for s2.Stats().LastError == "" && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if st := s2.Stats(); st.Sent != 0 || st.LastError == "" {
		t.Fatalf("without a client certificate: %+v", st)
	}
}
