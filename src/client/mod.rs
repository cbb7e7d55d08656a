//! The client side: talking to a sigil CA from the command line, pinned to its root.
//!
//! The CA is never trusted through the system trust store. First contact either names the
//! root file (`--root`) or its SHA-256 fingerprint (`--fingerprint`); with a fingerprint the
//! bundle is fetched once without verification, its root is checked against the
//! fingerprint, and every later request verifies the server against that root.
//!
//! - [`files`]: the certificate directory, replaced a whole set at a time.
//! - [`request`]: keys, CSRs, `POST /v1/sign` and `POST /v1/renew`.
//! - [`agent`]: keeps a certificate directory fresh.

pub mod agent;
pub mod files;
pub mod request;

pub mod admin;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use reqwest::{Method, StatusCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// How long one request to the CA may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the CA is and how to trust it.
#[derive(Debug, Clone, Args)]
pub struct CaArgs {
    /// Base URL of the CA
    #[arg(
        long = "ca",
        env = "SIGIL_CA",
        default_value = "https://localhost:8443"
    )]
    pub url: String,
    /// PEM file with the CA's root certificate
    #[arg(long, env = "SIGIL_ROOT", conflicts_with = "fingerprint")]
    pub root: Option<PathBuf>,
    /// SHA-256 fingerprint of the CA's root (hex, colons allowed), for first contact
    #[arg(long, env = "SIGIL_FINGERPRINT")]
    pub fingerprint: Option<String>,
}

/// Admin credentials.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// File holding an admin key
    #[arg(long, env = "SIGIL_ADMIN_KEY_FILE")]
    pub admin_key_file: PathBuf,
}

impl AdminArgs {
    pub fn key(&self) -> anyhow::Result<String> {
        let key = crate::ca::keyfile::read_secret(&self.admin_key_file)?;
        Ok(key.trim().to_owned())
    }
}

/// A problem+json answer from the CA.
#[derive(Debug, Deserialize)]
pub struct Problem {
    pub status: u16,
    pub detail: String,
    #[serde(default)]
    pub code: String,
}

/// An error from the CA, or from reaching it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the CA refused the request ({}): {}", .0.status, .0.detail)]
    Refused(Problem),
    #[error("reaching the CA: {0:#}")]
    Unreachable(anyhow::Error),
    /// A failure on this side: making a key, reading or writing files.
    #[error("{0:#}")]
    Local(anyhow::Error),
}

/// Wraps a transport error, with a hint when the CA's certificate was not trusted: that is a
/// wrong root far more often than an attack, and the bare TLS error does not say so.
fn unreachable(e: reqwest::Error) -> ClientError {
    let chain = format!("{e:?}");
    let err = anyhow::Error::from(e);
    if chain.contains("InvalidCertificate") {
        return ClientError::Unreachable(err.context(
            "the CA's TLS certificate does not chain to the root this command trusts; check \
             --root (SIGIL_ROOT) or --fingerprint, and --ca",
        ));
    }
    ClientError::Unreachable(err)
}

impl ClientError {
    /// True for errors worth retrying: the CA or its database unreachable, or 5xx, or a
    /// local failure such as a full disk.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Refused(p) => p.status >= 500 || p.status == 408 || p.status == 429,
            ClientError::Unreachable(_) | ClientError::Local(_) => true,
        }
    }
}

/// A client for one CA, with the root pinned.
#[derive(Clone)]
pub struct CaClient {
    base: String,
    http: reqwest::Client,
    pub root_pem: String,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(
    root_pem: &str,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots
            .add(cert.context("reading root PEM")?)
            .context("adding root")?;
    }
    if roots.is_empty() {
        bail!("the root file holds no certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("reading certificate chain")?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading key")?;
            builder
                .with_client_auth_cert(chain, key)
                .context("loading client certificate")?
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn http_client(cfg: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building HTTP client")
}

/// Accepts any server certificate. Used only to download the bundle on first contact, whose
/// root is then checked against the fingerprint the user gave; nothing else is sent over it.
#[derive(Debug)]
struct FirstContact(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for FirstContact {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Normalizes a fingerprint as users paste it: hex, any case, optional colons.
pub fn normalize_fingerprint(f: &str) -> String {
    f.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Fetches the bundle without verifying the server, and keeps it only if it holds a root
/// with the given fingerprint.
async fn bootstrap_root(base: &str, fingerprint: &str) -> anyhow::Result<String> {
    let want = normalize_fingerprint(fingerprint);
    if want.len() != 64 {
        bail!("--fingerprint must be the 64 hex digits of the root's SHA-256 fingerprint");
    }
    let p = provider();
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FirstContact(p)))
        .with_no_client_auth();
    let http = http_client(cfg)?;
    let pem = http
        .get(format!("{base}/v1/bundle"))
        .send()
        .await
        .context("fetching the trust bundle")?
        .error_for_status()?
        .text()
        .await?;
    let ders =
        crate::pem::decode_all(&pem, "CERTIFICATE").map_err(|e| anyhow::anyhow!(e.detail))?;
    for der in ders {
        if crate::ca::sha256_hex(&der) == want {
            return Ok(crate::pem::encode("CERTIFICATE", &der));
        }
    }
    bail!("the CA at {base} does not serve a root with fingerprint {want}; refusing to trust it")
}

impl CaClient {
    /// Connects to the CA as `args` says, with no client certificate.
    pub async fn new(args: &CaArgs) -> anyhow::Result<Self> {
        let base = args.url.trim_end_matches('/').to_owned();
        let root_pem = match (&args.root, &args.fingerprint) {
            (Some(path), _) => std::fs::read_to_string(path)
                .with_context(|| format!("reading root {}", path.display()))?,
            (None, Some(fp)) => bootstrap_root(&base, fp).await?,
            (None, None) => bail!(
                "say how to trust the CA: --root FILE (or SIGIL_ROOT) or --fingerprint SHA256 \
                 (printed by sigil init)"
            ),
        };
        Self::with_root(&base, root_pem, None)
    }

    /// A client that trusts `root_pem` and, when given, presents `identity` (chain, key PEM).
    pub fn with_root(
        base: &str,
        root_pem: String,
        identity: Option<(&str, &str)>,
    ) -> anyhow::Result<Self> {
        let http = http_client(tls_config(&root_pem, identity)?)?;
        Ok(CaClient {
            base: base.trim_end_matches('/').to_owned(),
            http,
            root_pem,
        })
    }

    /// The same CA, presenting a client certificate.
    pub fn with_identity(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        Self::with_root(
            &self.base,
            self.root_pem.clone(),
            Some((chain_pem, key_pem)),
        )
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client, verifying the CA against the pinned root.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends a request and decodes a JSON answer, or the CA's problem.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Unreachable(anyhow::anyhow!("decoding the CA's answer: {e}"))
            });
        }
        Err(ClientError::Refused(
            serde_json::from_slice(&bytes).unwrap_or(Problem {
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes).trim().to_owned(),
                code: String::new(),
            }),
        ))
    }

    /// GETs a document with an optional ETag; `None` when the CA answered 304.
    pub async fn get_document(
        &self,
        path: &str,
        etag: Option<&str>,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, ClientError> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(e) = etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        let resp = req.send().await.map_err(unreachable)?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let status = resp.status();
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(ClientError::Refused(
                serde_json::from_slice(&bytes).unwrap_or(Problem {
                    status: status.as_u16(),
                    detail: String::from_utf8_lossy(&bytes).trim().to_owned(),
                    code: String::new(),
                }),
            ));
        }
        Ok(Some((bytes.to_vec(), etag)))
    }
}

/// A client for the CA that issued the certificate in a directory: trusting `--root` or
/// `--fingerprint` when given, else the directory's own `ca.pem`.
pub async fn client_for_dir(args: &CaArgs, ca_pem: &str) -> anyhow::Result<CaClient> {
    if args.root.is_some() || args.fingerprint.is_some() {
        CaClient::new(args).await
    } else {
        CaClient::with_root(&args.url, ca_pem.to_owned(), None)
    }
}

/// Reads a file that must exist, with its path in the error.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
