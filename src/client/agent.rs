//! `sigil agent`: keeps a certificate directory fresh for a workload that reads files.
//!
//! - With no certificate in the directory, it gets one with the bootstrap token file.
//! - It renews over mTLS at about two thirds of the lifetime (counted from issuance, not from
//!   the backdated notBefore), with jitter so that a fleet started together spreads out.
//! - A failed renewal is retried with capped exponential backoff and jitter; the old files stay
//!   in place and keep working until they expire.
//! - A renewal the CA refuses for good (revoked, disabled, expired: a 4xx) is logged as an
//!   error; the agent then uses the token file if it holds a token not yet spent, and else
//!   retries slowly, so that an operator can re-enable the identity or drop in a new token.
//! - It polls the trust bundle and, with `--crl`, the CRLs, with ETags.
//! - After any change it runs `--exec` and signals the process in `--pid-file`.
//! - SIGTERM and SIGINT stop it between steps; a write in progress completes first.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use time::OffsetDateTime;

use super::files::{CertDir, Material};
use super::request::{self, rfc3339, Issued, KeyType, Leaf};
use super::{CaArgs, CaClient, ClientError};

/// First retry delay after a transient failure; doubled each time up to the cap.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest wait between retries of a transient failure. Shorter lifetimes shorten it further
/// (a tenth of the lifetime), so that a brief outage never costs a short certificate.
const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Wait between attempts after the CA refused for good: slow, since only an operator can
/// change the answer, but short enough to notice a new token or a re-enabled identity soon.
const REFUSED_RETRY: Duration = Duration::from_secs(60);
/// How long `--exec` may run before it is stopped.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// What `sigil agent` was asked to do.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub ca: CaArgs,
    pub dir: CertDir,
    pub token_file: Option<PathBuf>,
    pub exec: Option<String>,
    pub pid_file: Option<PathBuf>,
    pub signal: Signal,
    pub crl: bool,
    pub ttl: Option<String>,
    pub key_type: Option<KeyType>,
    pub sans: Vec<crate::names::San>,
    pub poll_interval: Duration,
}

/// A signal to send to the process in `--pid-file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal(pub libc::c_int);

impl std::str::FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let name = s.trim().to_ascii_uppercase();
        let name = name.strip_prefix("SIG").unwrap_or(&name);
        Ok(Signal(match name {
            "HUP" => libc::SIGHUP,
            "USR1" => libc::SIGUSR1,
            "USR2" => libc::SIGUSR2,
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "QUIT" => libc::SIGQUIT,
            "WINCH" => libc::SIGWINCH,
            _ => {
                return Err(format!(
                    "signal {s:?} must be one of HUP, USR1, USR2, TERM, INT, QUIT, WINCH"
                ))
            }
        }))
    }
}

/// Why the certificate could not be renewed or obtained.
enum Failure {
    /// Worth retrying soon: the CA unreachable, a 5xx, a local error.
    Transient(ClientError),
    /// The CA said no and will keep saying no until something changes.
    Refused(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        if e.is_transient() {
            Failure::Transient(e)
        } else {
            Failure::Refused(e)
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let mut agent = Agent::start(cfg).await?;
    tokio::select! {
        result = agent.run() => result,
        _ = shutdown_signal() => {
            tracing::info!(dir = %agent.cfg.dir.path().display(), "stopping on signal");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM and SIGINT");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

struct Agent {
    cfg: AgentConfig,
    /// The CA, without a client certificate. Rebuilt when the bundle changes unless the
    /// root was pinned on the command line.
    client: Option<CaClient>,
    current: Option<Material>,
    bundle_etag: Option<String>,
    crls_etag: Option<String>,
    /// SHA-256 of the last token handed to the CA, so that a spent token is not sent again.
    spent_token: Option<Vec<u8>>,
    /// Consecutive transient failures, for the backoff.
    failures: u32,
}

impl Agent {
    async fn start(cfg: AgentConfig) -> anyhow::Result<Self> {
        let current = read_dir(&cfg.dir).await?;
        if current.is_none() && cfg.token_file.is_none() {
            bail!(
                "{} holds no certificate yet; give --token-file with a bootstrap token \
                 (sigil token create)",
                cfg.dir.path().display()
            );
        }
        if current.is_none() && cfg.ca.root.is_none() && cfg.ca.fingerprint.is_none() {
            bail!(
                "{} holds no ca.pem yet; say how to trust the CA with --root or --fingerprint",
                cfg.dir.path().display()
            );
        }
        Ok(Agent {
            cfg,
            client: None,
            current,
            bundle_etag: None,
            crls_etag: None,
            spent_token: None,
            failures: 0,
        })
    }

    fn pinned(&self) -> bool {
        self.cfg.ca.root.is_some() || self.cfg.ca.fingerprint.is_some()
    }

    /// The CA client, made on first use: with `--fingerprint` that needs the network.
    async fn client(&mut self) -> Result<CaClient, ClientError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let bundle = self
            .current
            .as_ref()
            .map(|m| m.ca_pem.clone())
            .unwrap_or_default();
        let c = super::client_for_dir(&self.cfg.ca, &bundle)
            .await
            .map_err(ClientError::Unreachable)?;
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        // Runs until the process is stopped; only a certificate in the directory that cannot
        // be read ends it with an error.
        let mut renew_at = match &self.current {
            Some(m) => {
                let leaf = Leaf::of_chain(&m.chain_pem)?;
                tracing::info!(
                    dir = %self.cfg.dir.path().display(),
                    serial = %leaf.serial,
                    not_after = %rfc3339(leaf.not_after),
                    "found a certificate"
                );
                renewal_time(&leaf)
            }
            None => OffsetDateTime::now_utc(),
        };
        let mut poll_at = OffsetDateTime::now_utc() + jittered(self.cfg.poll_interval);
        loop {
            let wake = renew_at.min(poll_at);
            let wait = (wake - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
            tracing::debug!(renew_at = %rfc3339(renew_at), poll_at = %rfc3339(poll_at), "sleeping");
            tokio::time::sleep(wait.unsigned_abs()).await;

            let now = OffsetDateTime::now_utc();
            let before = self.current.clone();
            let mut poll = now >= poll_at;
            if now >= renew_at {
                renew_at = match self.renew_or_obtain().await {
                    Ok(leaf) => {
                        self.failures = 0;
                        // A new certificate is a good moment to refresh bundle and CRLs.
                        poll = true;
                        renewal_time(&leaf)
                    }
                    Err(Failure::Transient(e)) => {
                        self.failures += 1;
                        let delay = self.backoff();
                        tracing::warn!(
                            error = %e,
                            attempt = self.failures,
                            retry_in = %crate::names::format_duration(delay),
                            "getting a certificate failed; the current files stay in place"
                        );
                        now + delay
                    }
                    Err(Failure::Refused(e)) => {
                        self.failures = 0;
                        let delay = jittered(REFUSED_RETRY);
                        tracing::error!(
                            error = %e,
                            retry_in = %crate::names::format_duration(delay.unsigned_abs()),
                            "the CA refuses to renew this certificate; put a new bootstrap token \
                             in the token file (after a revocation only a token helps; a \
                             disabled identity must also be enabled again by an operator)"
                        );
                        now + delay
                    }
                };
            }
            if poll {
                self.refresh_documents().await;
                poll_at = OffsetDateTime::now_utc() + jittered(self.cfg.poll_interval);
            }
            if self.current == before {
                continue;
            }
            let Some(next) = self.current.clone() else {
                continue;
            };
            if write_dir(&self.cfg.dir, next).await.is_ok() {
                self.notify().await;
            } else {
                // What is on disk is still the old set, which is what the workload uses: keep
                // it in memory too, and try the whole step again after a pause.
                self.current = before;
                self.failures += 1;
                renew_at = renew_at.min(OffsetDateTime::now_utc() + self.backoff());
            }
        }
    }

    /// Renews the certificate, or gets a first one with the token; returns the new leaf.
    /// Only `self.current` changes; the caller writes the files.
    async fn renew_or_obtain(&mut self) -> Result<Leaf, Failure> {
        let client = self.client().await?;
        let refusal = match &self.current {
            Some(m) => {
                let leaf = Leaf::of_chain(&m.chain_pem)
                    .map_err(|e| Failure::Transient(ClientError::Local(e)))?;
                if leaf.not_after <= OffsetDateTime::now_utc() {
                    tracing::error!(
                        serial = %leaf.serial,
                        not_after = %rfc3339(leaf.not_after),
                        "the certificate has expired and cannot be renewed"
                    );
                    None
                } else {
                    tracing::info!(
                        serial = %leaf.serial,
                        not_after = %rfc3339(leaf.not_after),
                        "renewing"
                    );
                    match request::renew(&client, m, self.cfg.key_type, self.cfg.ttl.as_deref())
                        .await
                    {
                        Ok((issued, key_pem)) => {
                            tracing::info!(
                                serial = %issued.serial,
                                renewed_from = %leaf.serial,
                                not_after = %rfc3339(issued.not_after),
                                "renewed"
                            );
                            return self.adopt(issued, key_pem);
                        }
                        Err(e) if e.is_transient() => return Err(Failure::Transient(e)),
                        Err(e) => {
                            tracing::error!(
                                serial = %leaf.serial,
                                error = %e,
                                "the CA refused the renewal"
                            );
                            Some(e)
                        }
                    }
                }
            }
            None => None,
        };
        // The certificate cannot be renewed: a token not yet spent is the way back.
        let Some(token) = self.fresh_token()? else {
            return Err(Failure::Refused(refusal.unwrap_or_else(|| {
                ClientError::Local(anyhow::anyhow!(
                    "no certificate to renew and no unspent token in the token file"
                ))
            })));
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .to_vec();
        tracing::info!(
            dir = %self.cfg.dir.path().display(),
            "requesting a certificate with the token file"
        );
        let key_type = self.cfg.key_type.unwrap_or(KeyType::P256);
        match request::request(
            &client,
            &token,
            &self.cfg.sans,
            key_type,
            self.cfg.ttl.as_deref(),
        )
        .await
        {
            Ok((issued, key_pem)) => {
                self.spent_token = Some(digest);
                tracing::info!(
                    serial = %issued.serial,
                    not_after = %rfc3339(issued.not_after),
                    "got a certificate with the token"
                );
                self.adopt(issued, key_pem)
            }
            Err(e) if e.is_transient() => Err(Failure::Transient(e)),
            Err(e) => {
                // Refused tokens stay refused (spent, expired, forged): wait for a new one.
                self.spent_token = Some(digest);
                Err(Failure::Refused(e))
            }
        }
    }

    /// The token file's token, unless it is the one last sent.
    fn fresh_token(&self) -> Result<Option<String>, Failure> {
        let Some(path) = &self.cfg.token_file else {
            return Ok(None);
        };
        let token = match crate::ca::keyfile::read_secret(path) {
            Ok(t) => t.trim().to_owned(),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot use the token file");
                return Ok(None);
            }
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        if token.is_empty() || self.spent_token.as_deref() == Some(digest.as_ref()) {
            return Ok(None);
        }
        Ok(Some(token))
    }

    fn adopt(&mut self, issued: Issued, key_pem: String) -> Result<Leaf, Failure> {
        let leaf =
            Leaf::of_chain(&issued.chain).map_err(|e| Failure::Transient(ClientError::Local(e)))?;
        let (ca_pem, crls_pem) = match &self.current {
            Some(m) => (m.ca_pem.clone(), m.crls_pem.clone()),
            None => (
                self.client
                    .as_ref()
                    .map(|c| c.root_pem.clone())
                    .unwrap_or_default(),
                None,
            ),
        };
        self.current = Some(Material {
            chain_pem: issued.chain,
            key_pem,
            ca_pem,
            crls_pem,
        });
        Ok(leaf)
    }

    /// Fetches the bundle and, with `--crl`, the CRLs; a failure leaves the old ones and is
    /// tried again at the next poll.
    async fn refresh_documents(&mut self) {
        let Some(current) = self.current.clone() else {
            return;
        };
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the CA to refresh the trust bundle");
                return;
            }
        };
        let mut next = current.clone();
        match client
            .get_document("/v1/bundle", self.bundle_etag.as_deref())
            .await
        {
            Ok(Some((bytes, etag))) => {
                self.bundle_etag = etag;
                match String::from_utf8(bytes) {
                    Ok(pem) if pem != next.ca_pem => {
                        tracing::info!("fetched a new trust bundle");
                        next.ca_pem = pem;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        tracing::warn!("the CA sent a bundle that is not text; keeping the old one")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "refreshing the trust bundle failed; keeping the old one"
                )
            }
        }
        if self.cfg.crl {
            match client
                .get_document("/v1/crls.pem", self.crls_etag.as_deref())
                .await
            {
                Ok(Some((bytes, etag))) => {
                    self.crls_etag = etag;
                    match String::from_utf8(bytes) {
                        Ok(pem) if Some(&pem) != next.crls_pem.as_ref() => {
                            tracing::info!("fetched new CRLs");
                            next.crls_pem = Some(pem);
                        }
                        Ok(_) => {}
                        Err(_) => tracing::warn!(
                            "the CA sent CRLs that are not text; keeping the old ones"
                        ),
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "refreshing the CRLs failed; keeping the old ones")
                }
            }
        }
        if next.ca_pem != current.ca_pem && !self.pinned() {
            // The new bundle came over a connection verified by the old one.
            match CaClient::with_root(client.base(), next.ca_pem.clone(), None) {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    tracing::warn!(
                        error = %format!("{e:#}"),
                        "the new bundle cannot be used to reach the CA; keeping the old trust"
                    )
                }
            }
        }
        self.current = Some(next);
    }

    fn backoff(&self) -> Duration {
        let lifetime = self
            .current
            .as_ref()
            .and_then(|m| Leaf::of_chain(&m.chain_pem).ok())
            .map(|l| l.lifetime().unsigned_abs())
            .unwrap_or(BACKOFF_CAP * 10);
        let cap = BACKOFF_CAP.min(lifetime / 10).max(BACKOFF_START);
        let exp = BACKOFF_START.saturating_mul(1 << self.failures.saturating_sub(1).min(16));
        let ceiling = exp.min(cap);
        // Between half and all of the ceiling: spread out, never hammering.
        ceiling.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }

    /// Tells the workload that its files changed.
    async fn notify(&self) {
        if let Some(cmd) = &self.cfg.exec {
            run_exec(cmd, self.cfg.dir.path()).await;
        }
        if let Some(path) = &self.cfg.pid_file {
            if let Err(e) = signal_pid_file(path, self.cfg.signal) {
                tracing::warn!(
                    pid_file = %path.display(),
                    error = %format!("{e:#}"),
                    "signalling the workload failed"
                );
            }
        }
    }
}

/// When to renew: about two thirds into the lifetime, plus or minus a fifteenth of it.
pub fn renewal_time(leaf: &Leaf) -> OffsetDateTime {
    let lifetime = leaf.lifetime();
    let jitter = rand::thread_rng().gen_range(-1.0..=1.0) / 15.0;
    let at = leaf.issued_at() + lifetime * (2.0 / 3.0 + jitter);
    tracing::info!(
        serial = %leaf.serial,
        renew_at = %rfc3339(at),
        not_after = %rfc3339(leaf.not_after),
        "scheduled renewal"
    );
    at
}

/// `d` spread by up to a tenth either way.
fn jittered(d: Duration) -> time::Duration {
    let f = rand::thread_rng().gen_range(0.9..=1.1);
    time::Duration::try_from(d.mul_f64(f)).unwrap_or(time::Duration::MINUTE)
}

async fn read_dir(dir: &CertDir) -> anyhow::Result<Option<Material>> {
    let dir = dir.clone();
    tokio::task::spawn_blocking(move || dir.read())
        .await
        .context("reading the certificate directory")?
}

async fn write_dir(dir: &CertDir, m: Material) -> anyhow::Result<()> {
    let d = dir.clone();
    let result = tokio::task::spawn_blocking(move || d.write(&m))
        .await
        .context("writing the certificate directory")?;
    match &result {
        Ok(()) => tracing::info!(dir = %dir.path().display(), "wrote new files"),
        Err(e) => {
            tracing::error!(
                dir = %dir.path().display(),
                error = %format!("{e:#}"),
                "writing the certificate directory failed"
            )
        }
    }
    result
}

async fn run_exec(cmd: &str, dir: &std::path::Path) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("SIGIL_DIR", dir)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "starting --exec failed");
            return;
        }
    };
    match tokio::time::timeout(EXEC_TIMEOUT, child.wait()).await {
        Ok(Ok(status)) if status.success() => tracing::info!("--exec succeeded"),
        Ok(Ok(status)) => tracing::warn!(%status, "--exec failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "waiting for --exec failed"),
        Err(_) => tracing::warn!(timeout = ?EXEC_TIMEOUT, "--exec took too long and was stopped"),
    }
}

fn signal_pid_file(path: &std::path::Path, signal: Signal) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pid: libc::pid_t = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("{} does not hold a process id", path.display()))?;
    // SAFETY: kill takes plain integers; a positive pid names one process, never a group.
    if unsafe { libc::kill(pid, signal.0) } != 0 {
        bail!(
            "signalling process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    tracing::info!(pid, signal = signal.0, "signalled the workload");
    Ok(())
}
