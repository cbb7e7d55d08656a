package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// tlsBase loads our certificate (cert.pem is leaf + intermediates, all sent to the
// peer) and the trust bundle, and wires CRL checking into VerifyConnection.
func tlsBase(certF, keyF, caF, crlF string, leafOnly bool) (*tls.Config, *x509.CertPool, error) {
	pair, err := tls.LoadX509KeyPair(certF, keyF)
	if err != nil {
		return nil, nil, usageErr("%v", err)
	}
	caPEM, err := os.ReadFile(caF)
	if err != nil {
		return nil, nil, usageErr("%v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, usageErr("%s: no certificate", caF)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if crlF != "" {
		crls, err := loadCRLs(crlF)
		if err != nil {
			return nil, nil, err
		}
		// VerifyConnection runs after the standard chain verification, on both sides,
		// and also on resumed sessions, so a revoked peer cannot slip in by resumption.
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return checkChains(cs.VerifiedChains, crls, leafOnly)
		}
	}
	return cfg, pool, nil
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	certF := fs.String("cert", "", "certificate chain PEM (leaf first)")
	keyF := fs.String("key", "", "private key PEM")
	caF := fs.String("ca", "", "trust bundle PEM for client certificates")
	crlF := fs.String("crl", "", "PEM file with one or more X509 CRL blocks")
	listen := fs.String("listen", "127.0.0.1:0", "address to bind")
	portF := fs.String("port-file", "", "write the bound port here")
	leafOnly := fs.Bool("crl-leaf-only", false, "check only the leaf against the CRLs")
	if err := fs.Parse(args); err != nil {
		return errUsage{err}
	}
	if err := need(fs, "cert", "key", "ca", "crl"); err != nil {
		return err
	}
	cfg, pool, err := tlsBase(*certF, *keyF, *caF, *crlF, *leafOnly)
	if err != nil {
		return err
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	cfg.ClientCAs = pool

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if *portF != "" {
		// Write then rename, so a harness polling the file never reads a partial port.
		tmp := filepath.Join(filepath.Dir(*portF), "."+filepath.Base(*portF)+".tmp")
		if err := os.WriteFile(tmp, []byte(strconv.Itoa(port)+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, *portF); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "peer server: listening on %s\n", ln.Addr())
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "ok %s\n", r.TLS.PeerCertificates[0].Subject.CommonName)
	})
	// Handshake failures (bad or revoked clients) go to stderr through ErrorLog's default.
	srv := &http.Server{Handler: mux, TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second}
	return srv.ServeTLS(ln, "", "")
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	certF := fs.String("cert", "", "client certificate chain PEM (leaf first)")
	keyF := fs.String("key", "", "private key PEM")
	caF := fs.String("ca", "", "trust bundle PEM for the server certificate")
	crlF := fs.String("crl", "", "also check the server chain against these CRLs")
	url := fs.String("url", "", "https URL to GET")
	leafOnly := fs.Bool("crl-leaf-only", false, "check only the leaf against the CRLs")
	sni := fs.String("server-name", "", "name to verify instead of the URL host")
	if err := fs.Parse(args); err != nil {
		return errUsage{err}
	}
	if err := need(fs, "cert", "key", "ca", "url"); err != nil {
		return err
	}
	cfg, pool, err := tlsBase(*certF, *keyF, *caF, *crlF, *leafOnly)
	if err != nil {
		return err
	}
	cfg.RootCAs = pool
	cfg.ServerName = *sni
	client := &http.Client{
		Timeout:   15 * time.Second,
		Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: false},
	}
	// The body read is what surfaces a TLS 1.3 server's late rejection of our certificate.
	resp, err := client.Get(*url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	os.Stdout.Write(body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP status %s", resp.Status)
	}
	return nil
}
