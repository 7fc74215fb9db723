package adapters

import (
	"crypto/tls"
	"crypto/x509"
	"os"
)

// TLSFiles names the PEM files of a TLS client configuration, as broker URLs
// give them (?ca=…&cert=…&key=…).
type TLSFiles struct {
	// CA verifies the server; empty means the system roots.
	CA string
	// Cert and Key, both or neither, authenticate the client.
	Cert, Key string
}

// Config loads the files into a TLS client configuration (TLS 1.2 or
// later). op prefixes errors, which name the file and match
// ErrInvalidArgument.
func (f TLSFiles) Config(op string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, Errorf(ErrInvalidArgument, op, "ca: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, Errorf(ErrInvalidArgument, op, "ca %s: no PEM certificate in it", f.CA)
		}
		cfg.RootCAs = pool
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, Errorf(ErrInvalidArgument, op, "cert %q and key %q: give both or neither", f.Cert, f.Key)
	}
	if f.Cert != "" {
		c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, Errorf(ErrInvalidArgument, op, "cert %s, key %s: %v", f.Cert, f.Key, err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

// Any reports whether a file is named.
func (f TLSFiles) Any() bool { return f.CA != "" || f.Cert != "" || f.Key != "" }
