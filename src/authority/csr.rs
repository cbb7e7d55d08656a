//! Certificate signing requests, parsed and verified.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::ca::KeyKind;
use crate::error::{Error, Result};
use crate::names::San;

/// Largest CSR accepted, in bytes of DER. An RSA-4096 CSR with a few names is about 1.5 KB.
const MAX_CSR_DER: usize = 16 * 1024;

/// Signature algorithms accepted on a CSR; SHA-1 and anything unknown are refused.
const ACCEPTED_SIGNATURES: &[&str] = &[
    "1.2.840.10045.4.3.2",   // ecdsa-with-SHA256
    "1.2.840.10045.4.3.3",   // ecdsa-with-SHA384
    "1.3.101.112",           // Ed25519
    "1.2.840.113549.1.1.11", // sha256WithRSAEncryption
    "1.2.840.113549.1.1.12", // sha384WithRSAEncryption
    "1.2.840.113549.1.1.13", // sha512WithRSAEncryption
];

/// A CSR whose self-signature has been checked: proof that the requester holds the key.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    pub spki_der: Vec<u8>,
    pub key_kind: KeyKind,
    /// Names requested in the CSR's subjectAltName extension, parsed.
    pub sans: Vec<San>,
}

impl VerifiedCsr {
    /// Parses a PEM CSR (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`), checks its
    /// self-signature and its key type.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let trimmed = pem.trim_start();
        let label = if trimmed.starts_with("-----BEGIN NEW CERTIFICATE REQUEST-----") {
            "NEW CERTIFICATE REQUEST"
        } else {
            "CERTIFICATE REQUEST"
        };
        let der = crate::pem::decode_all(pem, label)
            .map_err(|e| Error::malformed("bad-csr", format!("reading CSR: {}", e.detail)))?
            .remove(0);
        Self::from_der(&der)
    }

    pub fn from_der(der: &[u8]) -> Result<Self> {
        if der.len() > MAX_CSR_DER {
            return Err(Error::malformed("bad-csr", "CSR is larger than 16 KiB"));
        }
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| Error::malformed("bad-csr", format!("parsing CSR DER: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::malformed(
                "bad-csr",
                "CSR has trailing bytes after its DER",
            ));
        }
        let sig_oid = csr.signature_algorithm.algorithm.to_id_string();
        if !ACCEPTED_SIGNATURES.contains(&sig_oid.as_str()) {
            return Err(Error::forbidden(
                "weak-signature",
                format!(
                    "CSR signature algorithm {sig_oid} is not accepted; \
                     sign with SHA-256 or better"
                ),
            ));
        }
        // The key type is judged first, so that a weak key is named as such rather than
        // reported as a signature the verifier will not check.
        let spki_der = csr.certification_request_info.subject_pki.raw.to_vec();
        let key_kind = KeyKind::of_spki(&spki_der)?;
        csr.verify_signature().map_err(|_| {
            Error::malformed(
                "bad-csr-signature",
                "CSR self-signature does not verify: \
                 it was altered, or not signed with its own key",
            )
        })?;
        let mut sans = Vec::new();
        if let Some(exts) = csr.requested_extensions() {
            for ext in exts {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for name in &san.general_names {
                        sans.push(general_name(name)?);
                    }
                }
            }
        }
        sans.sort();
        sans.dedup();
        Ok(VerifiedCsr {
            spki_der,
            key_kind,
            sans,
        })
    }
}

fn general_name(name: &GeneralName<'_>) -> Result<San> {
    match name {
        GeneralName::DNSName(d) => San::parse(d),
        GeneralName::URI(u) => San::parse(u).and_then(|s| match s {
            San::Uri(_) => Ok(s),
            _ => Err(Error::malformed(
                "bad-name",
                format!("URI {u:?} is not an absolute URI"),
            )),
        }),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => {
                let octets = <[u8; 4]>::try_from(*bytes).map_err(|_| bad_ip())?;
                Ok(San::Ip(std::net::IpAddr::from(octets)))
            }
            16 => {
                let octets = <[u8; 16]>::try_from(*bytes).map_err(|_| bad_ip())?;
                Ok(San::Ip(std::net::IpAddr::from(octets)))
            }
            _ => Err(bad_ip()),
        },
        other => Err(Error::forbidden(
            "name-type-not-allowed",
            format!(
                "CSR asks for a name of a type this CA does not issue ({other}); \
                 use DNS names, IP addresses or URIs"
            ),
        )),
    }
}

fn bad_ip() -> Error {
    Error::malformed(
        "bad-name",
        "CSR holds an IP address SAN that is neither 4 nor 16 bytes",
    )
}
