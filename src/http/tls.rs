//! The TLS listener. Client certificates are optional at the TLS layer (only `/v1/renew`
//! needs one) and, when presented, must chain to this CA's root and not be listed in the
//! current CRLs. A new CRL means a new `ServerConfig`, swapped in for the next handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::PeerChain;
use crate::crl::Published;

/// A TLS handshake that has not finished by then is dropped, so slow clients cannot hold
/// sockets open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The pieces a `ServerConfig` is made of, kept to rebuild it with new CRLs.
pub struct TlsMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub root: CertificateDer<'static>,
}

impl TlsMaterial {
    pub fn from_pem(chain_pem: &str, key_pem: &str, root_der: &[u8]) -> anyhow::Result<Self> {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("reading server certificate chain")?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).context("reading server key")?;
        Ok(TlsMaterial {
            chain,
            key,
            root: CertificateDer::from(root_der.to_vec()),
        })
    }

    /// A server configuration that checks client certificates against the root and `crls`.
    pub fn config(&self, crls: Option<&Published>) -> anyhow::Result<Arc<ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots
            .add(self.root.clone())
            .context("adding root to the client verifier")?;
        let crl_ders: Vec<CertificateRevocationListDer<'static>> = crls
            .map(|p| {
                vec![
                    p.intermediate.der.to_vec().into(),
                    p.root.der.to_vec().into(),
                ]
            })
            .unwrap_or_default();
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated();
        if crl_ders.is_empty() {
            // Before the first CRL exists the database check in renewal still refuses
            // revoked certificates.
        } else {
            builder = builder.with_crls(crl_ders);
        }
        let verifier = builder
            .build()
            .context("building the client certificate verifier")?;
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .context("loading the server certificate")?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<ServerConfig>>,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.load_full());
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let chain = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| Arc::new(c.iter().map(|c| c.to_vec()).collect::<Vec<_>>()));
            let peer = PeerChain(chain);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(remote));
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("some connections did not finish in time"),
    }
    Ok(())
}

/// Local address a listener is bound to, for logs and for tests binding port 0.
pub fn local_addr(l: &TcpListener) -> anyhow::Result<SocketAddr> {
    l.local_addr().context("reading the bound address")
}
