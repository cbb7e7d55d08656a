package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"os"
)

func newKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case "rsa2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	case "rsa3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "rsa4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, usageErr("unknown --key-type %q", kind)
}

// writePEM creates the file with the given mode and re-applies it, because OpenFile's
// mode is ignored for a file that already exists and is masked by the umask otherwise.
func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		return err
	}
	return f.Close()
}

func runCSR(args []string) error {
	fs := flag.NewFlagSet("csr", flag.ContinueOnError)
	kind := fs.String("key-type", "p256", "p256|p384|ed25519|rsa2048|rsa3072|rsa4096")
	cn := fs.String("cn", "", "subject common name")
	var dns multi
	fs.Var(&dns, "dns", "DNS subjectAltName (repeatable)")
	keyOut := fs.String("key-out", "", "PKCS#8 PEM key output (mode 0600)")
	csrOut := fs.String("csr-out", "", "PEM CSR output")
	if err := fs.Parse(args); err != nil {
		return errUsage{err}
	}
	if err := need(fs, "cn", "key-out", "csr-out"); err != nil {
		return err
	}
	key, err := newKey(*kind)
	if err != nil {
		return err
	}
	// Go picks the signature algorithm from the key: SHA-256 for P-256 and RSA,
	// SHA-384 for P-384, pure Ed25519.
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: *cn}, DNSNames: dns}
	csr, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(*keyOut, "PRIVATE KEY", der, 0o600); err != nil {
		return err
	}
	return writePEM(*csrOut, "CERTIFICATE REQUEST", csr, 0o644)
}
