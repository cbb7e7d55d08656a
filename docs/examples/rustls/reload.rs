//! A rustls server and client that read sigil certificate directories, and pick up renewed
//! certificates and new CRLs for each new connection without a restart.
//!
//! ```text
//! cargo run --example rustls_reload -- \
//!     SERVER_DIR CLIENT_DIR SERVER_NAME ROUNDS INTERVAL_SECS [--expect-refused]
//! ```
//!
//! It connects ROUNDS times, INTERVAL_SECS apart, each time with a new handshake, and prints
//! the serials both sides presented. With `--expect-refused` it succeeds only if the server
//! refuses the client's certificate (for example, once the CRLs list it).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One generation of a certificate directory, read through a single `..data` target so that
/// certificate, key, bundle and CRLs belong together.
struct Generation {
    name: PathBuf,
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    /// Built once per generation: a rustls verifier holds its CRLs fixed.
    server: Arc<ServerConfig>,
}

/// A certificate directory kept by `sigil agent`.
struct CertDir {
    path: PathBuf,
    provider: Arc<CryptoProvider>,
    cache: Mutex<Option<Arc<Generation>>>,
}

impl CertDir {
    fn open(path: &Path) -> anyhow::Result<Arc<Self>> {
        let dir = Arc::new(CertDir {
            path: path.to_owned(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            cache: Mutex::new(None),
        });
        dir.current()?;
        Ok(dir)
    }

    /// The current generation: one readlink while nothing changed. A generation that cannot
    /// be read leaves the previous one in use.
    fn current(&self) -> anyhow::Result<Arc<Generation>> {
        let name = std::fs::read_link(self.path.join("..data"))
            .with_context(|| format!("reading {}/..data", self.path.display()))?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = cache.as_ref().filter(|g| g.name == name) {
            return Ok(g.clone());
        }
        match self.load(&name) {
            Ok(g) => {
                let g = Arc::new(g);
                *cache = Some(g.clone());
                Ok(g)
            }
            Err(e) => cache.clone().ok_or(e),
        }
    }

    fn load(&self, name: &Path) -> anyhow::Result<Generation> {
        let dir = self.path.join(name);
        let chain =
            CertificateDer::pem_file_iter(dir.join("cert.pem"))?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(dir.join("key.pem"))?;
        let signing_key = self.provider.key_provider.load_private_key(key)?;
        let key = Arc::new(CertifiedKey::new(chain.clone(), signing_key));
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(dir.join("ca.pem"))? {
            roots.add(cert?)?;
        }
        let roots = Arc::new(roots);
        let crls = match std::fs::read(dir.join("crls.pem")) {
            Ok(pem) => {
                CertificateRevocationListDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>()?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        // With crls.pem, both the intermediate's and the root's CRL are there, so rustls
        // checks the whole chain; without, only the chain to the bundle is checked.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), self.provider.clone())
                .with_crls(crls)
                .build()?;
        let server = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Fixed(key.clone())));
        Ok(Generation {
            name: name.to_owned(),
            key,
            roots,
            server: Arc::new(server),
        })
    }
}

/// Serves one generation's key: the server config is per generation already.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The client side presents whatever certificate is current at each handshake.
struct ClientCert(Arc<CertDir>);

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCert({})", self.0.path.display())
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().ok().map(|g| g.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn serial(cert: &CertificateDer<'_>) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(cert)
        .map(|(_, c)| {
            hex::encode(c.raw_serial())
                .trim_start_matches('0')
                .to_owned()
        })
        .unwrap_or_else(|_| "?".into())
}

async fn serve(listener: TcpListener, dir: Arc<CertDir>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let dir = dir.clone();
        tokio::spawn(async move {
            let Ok(generation) = dir.current() else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(generation.server.clone());
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let peer = tls.get_ref().1.peer_certificates().map(|c| serial(&c[0]));
            let _ = tls.write_all(peer.unwrap_or_default().as_bytes()).await;
            let _ = tls.shutdown().await;
        });
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        bail!(
            "usage: rustls_reload SERVER_DIR CLIENT_DIR SERVER_NAME ROUNDS INTERVAL_SECS \
             [--expect-refused]"
        );
    }
    let server_dir = CertDir::open(Path::new(&args[0]))?;
    let client_dir = CertDir::open(Path::new(&args[1]))?;
    let server_name = ServerName::try_from(args[2].clone())?;
    let rounds: u32 = args[3].parse()?;
    let interval = Duration::from_secs(args[4].parse()?);
    let expect_refused = args.get(5).is_some_and(|a| a == "--expect-refused");

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, server_dir));

    // The roots are those of the moment the config is made; a new root needs a new config.
    let client = ClientConfig::builder_with_provider(client_dir.provider.clone())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(client_dir.current()?.roots.clone())
        .with_client_cert_resolver(Arc::new(ClientCert(client_dir.clone())));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));

    let (mut servers, mut clients) = (HashSet::new(), HashSet::new());
    for round in 1..=rounds {
        if round > 1 {
            tokio::time::sleep(interval).await;
        }
        let tcp = TcpStream::connect(addr).await?;
        let outcome = async {
            let mut tls = connector.connect(server_name.clone(), tcp).await?;
            let server_serial = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| serial(&c[0]))
                .unwrap_or_default();
            // Under TLS 1.3 a refused client certificate shows on the first read.
            let mut seen_by_server = String::new();
            tls.read_to_string(&mut seen_by_server).await?;
            Ok::<_, std::io::Error>((server_serial, seen_by_server))
        }
        .await;
        match (outcome, expect_refused) {
            (Ok((s, c)), false) => {
                println!("round {round}: server certificate {s}, client certificate {c}");
                servers.insert(s);
                clients.insert(c);
            }
            (Err(e), true) => {
                println!("refused as expected: {e}");
                return Ok(());
            }
            (Ok((_, c)), true) => {
                bail!("round {round}: the server accepted client certificate {c}")
            }
            (Err(e), false) => bail!("round {round}: {e}"),
        }
    }
    println!(
        "server certificates seen: {}, client certificates seen: {}",
        servers.len(),
        clients.len()
    );
    Ok(())
}
