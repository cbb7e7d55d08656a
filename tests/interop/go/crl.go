package main

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"
)

// loadCRLs parses every "X509 CRL" block of a PEM file (sigil's crls.pem holds the
// intermediate's CRL and the root's CRL). Signatures are checked later, against the
// issuer found in the verified chain, because only then is the issuer trusted.
func loadCRLs(path string) ([]*x509.RevocationList, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usageErr("%v", err)
	}
	var crls []*x509.RevocationList
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "X509 CRL" {
			continue
		}
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return nil, usageErr("%s: %v", path, err)
		}
		crls = append(crls, crl)
	}
	if len(crls) == 0 {
		return nil, usageErr("%s: no X509 CRL block", path)
	}
	return crls, nil
}

// checkChains does what crypto/tls never does: revocation checking. For each verified
// chain (leaf first, root last) it checks the leaf, and unless leafOnly every certificate
// below the root, against a CRL from its issuer. Like OpenSSL's crl_check_all it fails
// closed: a missing, badly signed or out-of-date CRL is an error, not a pass.
func checkChains(chains [][]*x509.Certificate, crls []*x509.RevocationList, leafOnly bool) error {
	if len(chains) == 0 {
		return fmt.Errorf("no verified chain to check against the CRL")
	}
	for _, chain := range chains {
		depth := len(chain) - 1 // the root is not covered by any CRL
		if leafOnly && depth > 1 {
			depth = 1
		}
		for i := 0; i < depth; i++ {
			if err := checkCert(chain[i], chain[i+1], crls); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkCert(cert, issuer *x509.Certificate, crls []*x509.RevocationList) error {
	now := time.Now()
	found := false
	for _, crl := range crls {
		if !bytes.Equal(crl.RawIssuer, cert.RawIssuer) {
			continue
		}
		if err := crl.CheckSignatureFrom(issuer); err != nil {
			return fmt.Errorf("CRL from %q: bad signature: %v", crl.Issuer, err)
		}
		if now.Before(crl.ThisUpdate) {
			return fmt.Errorf("CRL from %q is not yet valid (thisUpdate %s)", crl.Issuer, crl.ThisUpdate)
		}
		if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate) {
			return fmt.Errorf("CRL from %q has expired (nextUpdate %s)", crl.Issuer, crl.NextUpdate)
		}
		found = true
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
				return fmt.Errorf("certificate %q serial %x is revoked (since %s, reason %d)",
					cert.Subject, cert.SerialNumber, e.RevocationTime.Format(time.RFC3339), e.ReasonCode)
			}
		}
	}
	if !found {
		return fmt.Errorf("no CRL from issuer %q of %q", cert.Issuer, cert.Subject)
	}
	return nil
}
