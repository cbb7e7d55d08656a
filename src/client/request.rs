//! Getting a certificate: a first one for a bootstrap token (`POST /v1/sign`), or a new one
//! for the certificate in hand, over mTLS (`POST /v1/renew`). The private key is made here
//! and leaves this process only into the certificate directory, mode 0600; the CA sees a CSR.

use clap::ValueEnum;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use reqwest::Method;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::files::Material;
use super::{CaClient, ClientError};
use crate::ca::KeyKind;
use crate::names::{San, Serial};

/// Key types `sigil request` can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    P256,
    P384,
    Ed25519,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

impl KeyType {
    /// Makes a new key. RSA keys come from the `rsa` crate, since ring signs with RSA but
    /// cannot make the keys; everything else, and all signing, is ring through rcgen.
    /// RSA-4096 takes seconds, so call this off the async runtime's threads.
    pub fn generate(self) -> anyhow::Result<KeyPair> {
        let ec = |alg| KeyPair::generate_for(alg).map_err(|e| anyhow::anyhow!("making a key: {e}"));
        match self {
            KeyType::P256 => ec(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::P384 => ec(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Ed25519 => ec(&rcgen::PKCS_ED25519),
            KeyType::Rsa2048 => rsa_key(2048),
            KeyType::Rsa3072 => rsa_key(3072),
            KeyType::Rsa4096 => rsa_key(4096),
        }
    }

    /// The key type of a certificate's public key, so that renewal keeps it.
    pub fn of_kind(kind: KeyKind) -> Option<Self> {
        match kind {
            KeyKind::EcdsaP256 => Some(KeyType::P256),
            KeyKind::EcdsaP384 => Some(KeyType::P384),
            KeyKind::Ed25519 => Some(KeyType::Ed25519),
            KeyKind::Rsa(2048) => Some(KeyType::Rsa2048),
            KeyKind::Rsa(3072) => Some(KeyType::Rsa3072),
            KeyKind::Rsa(4096) => Some(KeyType::Rsa4096),
            KeyKind::Rsa(_) => None,
        }
    }
}

fn rsa_key(bits: usize) -> anyhow::Result<KeyPair> {
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits)
        .map_err(|e| anyhow::anyhow!("making an RSA-{bits} key: {e}"))?;
    let der = key
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("encoding the RSA key: {e}"))?;
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
        .map_err(|e| anyhow::anyhow!("loading the RSA key: {e}"))
}

/// A certificate as the CA returns it: the server's own answer type.
pub use crate::authority::Issued;

/// What a client needs to know about the leaf it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub key_type: Option<KeyType>,
}

impl Leaf {
    /// Reads the first certificate of a PEM chain.
    pub fn of_chain(chain_pem: &str) -> anyhow::Result<Self> {
        let der = crate::pem::decode_all(chain_pem, "CERTIFICATE")
            .map_err(|e| anyhow::anyhow!("reading the certificate: {}", e.detail))?
            .remove(0);
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
        let validity = cert.validity();
        Ok(Leaf {
            serial: Serial::from_be_bytes(cert.raw_serial()).to_string(),
            not_before: validity.not_before.to_datetime(),
            not_after: validity.not_after.to_datetime(),
            key_type: KeyKind::of_spki(cert.public_key().raw)
                .ok()
                .and_then(KeyType::of_kind),
        })
    }

    /// When the CA issued it: notBefore is backdated by the CA, so undo that, unless the
    /// result would not leave a lifetime (a certificate from a CA that does not backdate).
    pub fn issued_at(&self) -> OffsetDateTime {
        let undone = self.not_before + crate::ca::BACKDATE;
        if undone < self.not_after {
            undone
        } else {
            self.not_before
        }
    }

    /// The part of the lifetime that counts for scheduling: issuance to notAfter.
    pub fn lifetime(&self) -> time::Duration {
        self.not_after - self.issued_at()
    }
}

/// A time as logs and messages show it: RFC 3339, whole seconds, UTC.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A PEM CSR for `key` asking for `sans`; with none, the CA fills in the names the token
/// (or the certificate being renewed) allows. The subject is left empty: the CA sets it.
pub fn make_csr(key: &KeyPair, sans: &[San]) -> anyhow::Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for san in sans {
        params
            .subject_alt_names
            .push(crate::ca::san_type(san).map_err(|e| anyhow::anyhow!(e.detail))?);
    }
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| anyhow::anyhow!("making the CSR: {e}"))
}

/// A new key and its CSR, made on the blocking pool. Returns (key PEM, CSR PEM).
async fn key_and_csr(key_type: KeyType, sans: Vec<San>) -> Result<(String, String), ClientError> {
    tokio::task::spawn_blocking(move || {
        let key = key_type.generate()?;
        let csr = make_csr(&key, &sans)?;
        Ok((key.serialize_pem(), csr))
    })
    .await
    .map_err(|e| ClientError::Local(anyhow::anyhow!("key generation task failed: {e}")))?
    .map_err(ClientError::Local)
}

/// Gets a first certificate for a bootstrap token. The returned material carries the
/// client's current bundle; refresh it with [`fetch_bundle`].
pub async fn request(
    client: &CaClient,
    token: &str,
    sans: &[San],
    key_type: KeyType,
    ttl: Option<&str>,
) -> Result<(Issued, String), ClientError> {
    let (key_pem, csr) = key_and_csr(key_type, sans.to_vec()).await?;
    let body = serde_json::json!({ "csr": csr, "token": token, "ttl": ttl });
    let issued: Issued = client
        .call(Method::POST, "/v1/sign", None, Some(body))
        .await?;
    Ok((issued, key_pem))
}

/// Renews the certificate in `current` over mTLS for a new key of `key_type` (by default the
/// current key's type). The names stay those of the current certificate.
pub async fn renew(
    client: &CaClient,
    current: &Material,
    key_type: Option<KeyType>,
    ttl: Option<&str>,
) -> Result<(Issued, String), ClientError> {
    let leaf = Leaf::of_chain(&current.chain_pem).map_err(ClientError::Local)?;
    let key_type = key_type.or(leaf.key_type).unwrap_or(KeyType::P256);
    let mtls = client
        .with_identity(&current.chain_pem, &current.key_pem)
        .map_err(ClientError::Local)?;
    let (key_pem, csr) = key_and_csr(key_type, Vec::new()).await?;
    let body = serde_json::json!({ "csr": csr, "ttl": ttl });
    let issued: Issued = mtls
        .call(Method::POST, "/v1/renew", None, Some(body))
        .await?;
    Ok((issued, key_pem))
}

/// The trust bundle, PEM.
pub async fn fetch_bundle(client: &CaClient) -> Result<String, ClientError> {
    fetch_text(client, "/v1/bundle").await
}

/// Both CRLs, PEM.
pub async fn fetch_crls(client: &CaClient) -> Result<String, ClientError> {
    fetch_text(client, "/v1/crls.pem").await
}

async fn fetch_text(client: &CaClient, path: &str) -> Result<String, ClientError> {
    let (bytes, _) = client.get_document(path, None).await?.ok_or_else(|| {
        ClientError::Unreachable(anyhow::anyhow!("{path}: 304 to a request without an ETag"))
    })?;
    String::from_utf8(bytes)
        .map_err(|_| ClientError::Unreachable(anyhow::anyhow!("{path} is not UTF-8 text")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::VerifiedCsr;

    #[test]
    fn every_key_type_makes_a_csr_the_ca_accepts() {
        let sans = vec![
            San::parse("api.internal").unwrap(),
            San::parse("10.0.0.1").unwrap(),
        ];
        // RSA-4096 is left to the integration tests: unoptimized it takes too long here.
        for (key_type, kind) in [
            (KeyType::P256, KeyKind::EcdsaP256),
            (KeyType::P384, KeyKind::EcdsaP384),
            (KeyType::Ed25519, KeyKind::Ed25519),
            (KeyType::Rsa2048, KeyKind::Rsa(2048)),
        ] {
            let key = key_type.generate().unwrap();
            let csr = VerifiedCsr::from_pem(&make_csr(&key, &sans).unwrap()).unwrap();
            assert_eq!(csr.key_kind, kind, "{key_type:?}");
            let mut want = sans.clone();
            want.sort();
            assert_eq!(csr.sans, want, "{key_type:?}");
            assert!(key.serialize_pem().contains("BEGIN PRIVATE KEY"));
        }
        let bare = make_csr(&KeyType::P256.generate().unwrap(), &[]).unwrap();
        assert!(VerifiedCsr::from_pem(&bare).unwrap().sans.is_empty());
    }

    #[test]
    fn lifetime_counts_from_issuance_not_the_backdated_start() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let leaf = |nb: OffsetDateTime, na: OffsetDateTime| Leaf {
            serial: "01".into(),
            not_before: nb,
            not_after: na,
            key_type: None,
        };
        let backdated = leaf(
            t - time::Duration::seconds(60),
            t + time::Duration::seconds(30),
        );
        assert_eq!(backdated.issued_at(), t);
        assert_eq!(backdated.lifetime(), time::Duration::seconds(30));
        // A certificate that is not backdated and shorter than the backdate keeps notBefore.
        let short = leaf(t, t + time::Duration::seconds(20));
        assert_eq!(short.lifetime(), time::Duration::seconds(20));
    }
}
