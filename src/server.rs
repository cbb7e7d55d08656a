//! Starting the CA: first-start initialization, loading, wiring the parts together, and
//! running until SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use time::OffsetDateTime;

use crate::authority::{self, Authority};
use crate::ca::{keyfile, Ca, CaFiles, ImportFiles, InitOptions};
use crate::config::Settings;
use crate::crl::CrlPublisher;
use crate::http;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::token::{Algorithm, SigningKey};

/// What `init` made, for the operator.
pub struct InitReport {
    pub root_fingerprint: String,
    /// The first admin key, shown once; `None` when the database already had one.
    pub admin_key: Option<String>,
}

/// Creates the CA in an empty data directory and records the first admin key in the
/// database. Fails if the directory already holds a CA.
pub async fn init(settings: &Settings, import: Option<&ImportFiles>) -> anyhow::Result<InitReport> {
    let files = CaFiles::new(&settings.data_dir);
    if files.is_initialized() {
        anyhow::bail!(
            "{} already holds a CA (root.crt exists); refusing to replace it",
            settings.data_dir.display()
        );
    }
    match import {
        Some(src) => {
            Ca::import(&files, src)?;
            tracing::info!(dir = %settings.data_dir.display(), "imported root and intermediate CA");
        }
        None => {
            let opts = InitOptions {
                organization: settings.organization.clone(),
            };
            Ca::create(&files, &opts)?;
            tracing::info!(dir = %settings.data_dir.display(), "created root and intermediate CA");
        }
    }
    let (_, provisioner_pem) =
        SigningKey::generate(Algorithm::ES256).map_err(|e| anyhow::anyhow!(e.detail))?;
    keyfile::write_new_secret(&files.provisioner_key(), provisioner_pem.as_bytes())?;
    let ca = Ca::load(&files)?;
    ensure_server_cert(&ca, &files, settings)?;
    let store = Store::connect(&settings.database_url, 2).await?;
    let admin_key = ensure_admin_key(&store, &files).await?;
    Ok(InitReport {
        root_fingerprint: ca.root_fingerprint(),
        admin_key,
    })
}

/// Makes sure the database knows an admin key. A new database with an existing data
/// directory (a new PostgreSQL for existing CA files) adopts `admin.key`; with neither, a
/// new key is made and written to `admin.key`.
async fn ensure_admin_key(store: &Store, files: &CaFiles) -> anyhow::Result<Option<String>> {
    if store
        .admin_key_count()
        .await
        .map_err(|e| anyhow::anyhow!(e.detail))?
        > 0
    {
        return Ok(None);
    }
    let path = files.admin_key();
    let now = authority::now_secs();
    if path.exists() {
        let key = keyfile::read_secret(&path)?;
        let key = key.trim();
        let id = key
            .strip_prefix(authority::ADMIN_KEY_PREFIX)
            .and_then(|rest| rest.split('_').next())
            .context("admin.key does not hold a sigil admin key")?;
        let hash = crate::ca::sha256_hex(key.as_bytes());
        // Another replica may register the same key at the same moment; either insert will do.
        if let Err(e) = store.insert_admin_key(id, &hash, now).await {
            tracing::debug!(error = %e, "admin key registered concurrently");
        }
        tracing::info!(admin_key = id, "registered admin.key in the database");
        return Ok(None);
    }
    let (id, key, hash) = authority::new_admin_key().map_err(|e| anyhow::anyhow!(e.detail))?;
    store
        .insert_admin_key(&id, &hash, now)
        .await
        .map_err(|e| anyhow::anyhow!(e.detail))?;
    keyfile::write_new_secret(&path, format!("{key}\n").as_bytes())?;
    tracing::info!(admin_key = %id, file = %path.display(), "created the first admin key");
    Ok(Some(key))
}

/// Issues the server's own TLS certificate when it is missing, names other hosts than
/// configured, or has less than a third of its life left.
fn ensure_server_cert(ca: &Ca, files: &CaFiles, settings: &Settings) -> anyhow::Result<()> {
    let (cert_path, key_path) = (files.server_cert(), files.server_key());
    if cert_path.exists() && key_path.exists() {
        let pem = std::fs::read_to_string(&cert_path)?;
        if server_cert_is_fresh(&pem, settings)? {
            keyfile::read_secret(&key_path)?;
            return Ok(());
        }
    }
    let (chain, key) = ca
        .issue_server_cert(&settings.dns, &settings.ip)
        .map_err(|e| anyhow::anyhow!(e.detail))?;
    keyfile::write_atomic(&key_path, key.as_bytes(), 0o600)?;
    keyfile::write_atomic(&cert_path, chain.as_bytes(), 0o644)?;
    tracing::info!(
        file = %cert_path.display(),
        dns = ?settings.dns,
        ip = ?settings.ip,
        "issued the server's TLS certificate"
    );
    Ok(())
}

fn server_cert_is_fresh(pem: &str, settings: &Settings) -> anyhow::Result<bool> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = crate::ca::pem_to_der(pem, "CERTIFICATE")?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| anyhow::anyhow!("parsing server.crt: {e}"))?;
    let v = cert.validity();
    let (nb, na) = (v.not_before.timestamp(), v.not_after.timestamp());
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if now > na - (na - nb) / 3 {
        return Ok(false);
    }
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        })
        .unwrap_or_default();
    let has = |n: &str| {
        names
            .iter()
            .any(|x| x.ends_with(&format!("({n})")) || x == n)
    };
    Ok(settings.dns.iter().all(|d| has(d)) && settings.ip.iter().all(|ip| has(&ip.to_string())))
}

/// A running server's address, for whoever started it.
pub async fn serve(mut settings: Settings, addr_file: Option<PathBuf>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = http::tls::local_addr(&listener)?;
    if settings.public_url.is_none() {
        settings.public_url = Some(format!("https://localhost:{}", addr.port()));
    }
    let settings = Arc::new(settings);
    let files = CaFiles::new(&settings.data_dir);
    if !files.is_initialized() {
        tracing::info!(
            dir = %settings.data_dir.display(),
            "data directory holds no CA; initializing it"
        );
        let report = init(&settings, None).await?;
        announce(&report);
    }
    let ca = Arc::new(Ca::load(&files)?);
    ensure_server_cert(&ca, &files, &settings)?;
    let admin_signer = SigningKey::from_pkcs8_pem(&keyfile::read_secret(&files.provisioner_key())?)
        .map_err(|e| {
            anyhow::anyhow!(
                "reading {}: {}",
                files.provisioner_key().display(),
                e.detail
            )
        })?;
    let store = Store::connect(&settings.database_url, settings.db_max_connections).await?;
    if let Some(key) = ensure_admin_key(&store, &files).await? {
        announce(&InitReport {
            root_fingerprint: ca.root_fingerprint(),
            admin_key: Some(key),
        });
    }
    let crl = CrlPublisher::new(
        ca.clone(),
        store.clone(),
        settings.crl_validity,
        settings.crl_publish_delay,
    );
    crl.start().await?;
    let metrics = Arc::new(Metrics::default());
    let authority = Arc::new(
        Authority::new(
            settings.clone(),
            ca.clone(),
            store,
            crl.clone(),
            metrics,
            admin_signer,
        )
        .map_err(|e| anyhow::anyhow!("loading policies: {}", e.detail))?,
    );
    log_policies(&authority.policies(), "loaded policies");

    let material = http::tls::TlsMaterial::from_pem(
        &std::fs::read_to_string(files.server_cert())?,
        &keyfile::read_secret(&files.server_key())?,
        &ca.root.der,
    )?;
    let tls = Arc::new(ArcSwap::new(material.config()?));
    tokio::spawn(refresh_server_cert(
        ca.clone(),
        settings.clone(),
        tls.clone(),
    ));
    let crl_updates = crl.subscribe();
    tokio::spawn(crl.clone().run());
    tokio::spawn(follow_crls_for_renewal(authority.clone(), crl_updates));
    tokio::spawn(reload_policies_on_sighup(authority.clone()));

    if let Some(path) = addr_file {
        keyfile::write_atomic(&path, addr.to_string().as_bytes(), 0o644)?;
    }
    tracing::info!(
        %addr,
        database = %redact_url(&settings.database_url),
        root_fingerprint = %ca.root_fingerprint(),
        "serving HTTPS"
    );
    http::tls::serve(listener, tls, http::router(authority), shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Rebuilds renewal's revocation check for the CRLs being served now and for every new one.
async fn follow_crls_for_renewal(
    authority: Arc<Authority>,
    mut rx: tokio::sync::watch::Receiver<Option<Arc<crate::crl::Published>>>,
) {
    let mut published = authority.crl.current();
    loop {
        if let Some(p) = published {
            let a = authority.clone();
            // Parsing a CRL of a million entries takes a second or more.
            let built = tokio::task::spawn_blocking(move || a.revocation_check.update(&p))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("CRL check task failed: {e}")));
            if let Err(e) = built {
                tracing::error!(error = %e, "loading the new CRLs into renewal's check failed");
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
        published = rx.borrow_and_update().clone();
    }
}

/// How often a running server looks at its own TLS certificate's remaining life.
const SERVER_CERT_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

/// Keeps the server's own TLS certificate fresh while it runs. The new certificate lives in
/// memory only: replicas sharing a data directory then never race to rewrite the same
/// certificate and key files, and each serves a certificate of its own from the same CA.
async fn refresh_server_cert(
    ca: Arc<Ca>,
    settings: Arc<Settings>,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
) {
    let mut current: Option<String> = None;
    loop {
        tokio::time::sleep(SERVER_CERT_CHECK).await;
        let pem = match &current {
            Some(p) => p.clone(),
            None => match std::fs::read_to_string(CaFiles::new(&settings.data_dir).server_cert()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "reading server.crt to check its lifetime");
                    continue;
                }
            },
        };
        if server_cert_is_fresh(&pem, &settings).unwrap_or(false) {
            continue;
        }
        let renewed = ca
            .issue_server_cert(&settings.dns, &settings.ip)
            .map_err(|e| anyhow::anyhow!(e.detail))
            .and_then(|(chain, key)| {
                let material = http::tls::TlsMaterial::from_pem(&chain, &key, &ca.root.der)?;
                Ok((chain, material.config()?))
            });
        match renewed {
            Ok((chain, config)) => {
                tls.store(config);
                current = Some(chain);
                tracing::info!("renewed the server's TLS certificate in memory");
            }
            Err(e) => tracing::error!(error = %e, "renewing the server's TLS certificate failed"),
        }
    }
}

/// Logs what an operator must know once: the root fingerprint, and where a new admin key
/// is. The key itself is neither logged nor printed: everything `serve` writes ends up with
/// a log collector (a container runtime keeps standard error too), so the key stays in
/// `admin.key` (0600) only. `sigil init`, run by an operator, prints it once instead.
pub fn announce(report: &InitReport) {
    tracing::info!(root_fingerprint = %report.root_fingerprint, "root CA fingerprint (SHA-256)");
    if report.admin_key.is_some() {
        tracing::info!("the first admin key is in admin.key in the data directory (mode 0600)");
    }
}

/// Reloads the policy directory on every SIGHUP; a set that fails to load leaves the one in
/// force untouched.
///
/// Known shortcoming: each process reloads only on its own signal. Replicas sharing one
/// database do not tell each other, so for a while they may decide by different sets until
/// every one is signalled; a policy version stored in the database and polled would close that.
async fn reload_policies_on_sighup(authority: Arc<Authority>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; policies will not reload");
        return;
    };
    while hup.recv().await.is_some() {
        match authority.reload_policies() {
            Ok(set) => log_policies(&set, "reloaded policies"),
            Err(e) => {
                tracing::error!(
                    error = %e.detail,
                    "policy reload failed; the previous policies stay in force"
                )
            }
        }
    }
}

fn log_policies(set: &crate::policy::PolicySet, what: &str) {
    tracing::info!(
        policies = set.policies.len(),
        provisioners = set.provisioners.len(),
        files = set.files.len(),
        "{what}"
    );
    for warning in &set.warnings {
        tracing::warn!(warning = %warning, "policy setting does not do what it seems to");
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

/// Hides a password in a database URL before it is logged.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Where `init` and `serve` look for the CA by default.
pub fn data_dir_or_default(dir: Option<&Path>) -> PathBuf {
    dir.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_DATA_DIR))
}
