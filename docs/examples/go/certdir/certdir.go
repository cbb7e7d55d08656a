// Package certdir serves the files of a sigil certificate directory (cert.pem, key.pem,
// ca.pem and crls.pem, kept fresh by `sigil agent`) to crypto/tls, picking up every new set
// without a restart. It uses the standard library only.
//
// The directory's reader contract: DIR/..data is a symlink to the current generation
// directory, replaced in one rename. Reading all files through the target of one readlink
// gives a certificate, key, bundle and CRLs that belong together.
package certdir

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Set is one consistent generation of the directory.
type Set struct {
	// Cert is the leaf with its chain and private key.
	Cert tls.Certificate
	// Roots holds the trust bundle (ca.pem).
	Roots *x509.CertPool
	// CRLs are the revocation lists from crls.pem; empty when the agent runs without --crl.
	CRLs []*x509.RevocationList
	// Generation names the generation directory the set was read from.
	Generation string
}

// Dir reads a certificate directory, caching the current set until ..data changes.
type Dir struct {
	path string
	mu   sync.Mutex
	set  *Set
}

// Open reads the directory once, so that a missing or broken directory fails at start.
func Open(path string) (*Dir, error) {
	d := &Dir{path: path}
	if _, err := d.Current(); err != nil {
		return nil, err
	}
	return d, nil
}

// Current returns the current set. It costs one readlink while nothing changed. When a new
// generation cannot be read, the previous set is kept and the next call tries again.
func (d *Dir) Current() (*Set, error) {
	gen, err := os.Readlink(filepath.Join(d.path, "..data"))
	if err != nil {
		return nil, fmt.Errorf("reading %s/..data: %w", d.path, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.set != nil && d.set.Generation == gen {
		return d.set, nil
	}
	set, err := load(filepath.Join(d.path, gen))
	if err != nil {
		if d.set != nil {
			return d.set, nil
		}
		return nil, err
	}
	set.Generation = gen
	d.set = set
	return set, nil
}

func load(dir string) (*Set, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		return nil, fmt.Errorf("loading certificate and key: %w", err)
	}
	bundle, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return nil, errors.New("ca.pem holds no certificate")
	}
	set := &Set{Cert: cert, Roots: roots}
	crls, err := os.ReadFile(filepath.Join(dir, "crls.pem"))
	if errors.Is(err, os.ErrNotExist) {
		return set, nil
	} else if err != nil {
		return nil, err
	}
	for block, rest := pem.Decode(crls); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing crls.pem: %w", err)
		}
		set.CRLs = append(set.CRLs, crl)
	}
	return set, nil
}

// GetCertificate is for tls.Config.GetCertificate: the current certificate, every handshake.
func (d *Dir) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	set, err := d.Current()
	if err != nil {
		return nil, err
	}
	return &set.Cert, nil
}

// GetClientCertificate is for tls.Config.GetClientCertificate.
func (d *Dir) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	set, err := d.Current()
	if err != nil {
		return nil, err
	}
	return &set.Cert, nil
}

// VerifyPeerCertificate is for tls.Config.VerifyPeerCertificate: crypto/tls has verified the
// chain; this refuses it when the current CRLs list any certificate in it. Go does no CRL
// checking of its own. Without CRLs in the directory it accepts every verified chain.
func (d *Dir) VerifyPeerCertificate(_ [][]byte, chains [][]*x509.Certificate) error {
	set, err := d.Current()
	if err != nil {
		return err
	}
	if len(set.CRLs) == 0 {
		return nil
	}
	var last error
	for _, chain := range chains {
		if last = set.checkChain(chain, time.Now()); last == nil {
			return nil
		}
	}
	if last == nil {
		last = errors.New("no verified chain to check")
	}
	return last
}

// checkChain needs, for every certificate below the root, a current CRL signed by its issuer
// that does not list it: the rule nginx and `openssl -crl_check_all` apply.
func (s *Set) checkChain(chain []*x509.Certificate, now time.Time) error {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		crl := s.crlOf(issuer)
		if crl == nil {
			return fmt.Errorf("no CRL from %s, which issued %s", issuer.Subject, cert.Subject)
		}
		if now.After(crl.NextUpdate) {
			return fmt.Errorf("the CRL of %s is past its nextUpdate; is the agent running with --crl?", issuer.Subject)
		}
		for _, entry := range crl.RevokedCertificateEntries {
			if entry.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return fmt.Errorf("certificate %x (%s) is revoked", cert.SerialNumber, cert.Subject)
			}
		}
	}
	return nil
}

func (s *Set) crlOf(issuer *x509.Certificate) *x509.RevocationList {
	for _, crl := range s.CRLs {
		if bytes.Equal(crl.RawIssuer, issuer.RawSubject) && crl.CheckSignatureFrom(issuer) == nil {
			return crl
		}
	}
	return nil
}

// ServerConfig requires client certificates from the trust bundle, not revoked, and serves the
// current certificate. It is rebuilt per handshake from the cached set, so a new bundle or
// new CRLs apply to the next connection.
func (d *Dir) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			set, err := d.Current()
			if err != nil {
				return nil, err
			}
			return &tls.Config{
				MinVersion:            tls.VersionTLS12,
				Certificates:          []tls.Certificate{set.Cert},
				ClientAuth:            tls.RequireAndVerifyClientCert,
				ClientCAs:             set.Roots,
				VerifyPeerCertificate: d.VerifyPeerCertificate,
			}, nil
		},
	}
}

// ClientConfig presents the current certificate and checks the server against the bundle
// and the CRLs. The roots are those of the moment it is called: after the bundle changes
// (a new root), make a new config.
func (d *Dir) ClientConfig(serverName string) (*tls.Config, error) {
	set, err := d.Current()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:            tls.VersionTLS12,
		ServerName:            serverName,
		RootCAs:               set.Roots,
		GetClientCertificate:  d.GetClientCertificate,
		VerifyPeerCertificate: d.VerifyPeerCertificate,
	}, nil
}
