//! PEM encoding and decoding of DER objects.

use base64::Engine;

use crate::error::{Error, Result};

/// Encodes DER as one PEM block with 64-column lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Decodes every PEM block labelled `label`, in order; other blocks are skipped.
///
/// # Errors
///
/// `Malformed` when the text is not PEM or holds no block with that label.
pub fn decode_all(text: &str, label: &str) -> Result<Vec<Vec<u8>>> {
    let mut found = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        let block = block.map_err(|e| {
            Error::malformed(
                "bad-pem",
                format!("reading PEM: {e}; expected -----BEGIN {label}-----"),
            )
        })?;
        if block.label == label {
            found.push(block.contents);
        }
    }
    if found.is_empty() {
        return Err(Error::malformed(
            "bad-pem",
            format!("no -----BEGIN {label}----- block found in the PEM text"),
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let der: Vec<u8> = (0..200u8).collect();
        let pem = encode("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        assert_eq!(decode_all(&pem, "CERTIFICATE").unwrap(), vec![der]);
        assert!(decode_all(&pem, "X509 CRL").is_err());
        assert!(decode_all("not pem", "CERTIFICATE").is_err());
    }
}
