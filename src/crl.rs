//! Builds, stores and publishes CRLs.
//!
//! Each replica serves the newest stored CRL from memory. A CRL is rebuilt when a revocation
//! took a sequence number larger than the one the stored CRL covers (whichever replica
//! recorded it; clocks play no part) and on a schedule, at half its validity, well before
//! nextUpdate. Builds are serialized across replicas by the store's CRL lock; the CRL number
//! comes from a counter row, so it only grows.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};

use crate::ca::{self, Ca, CrlEntry, CrlScope};
use crate::error::{Error, Result};
use crate::names::Serial;
use crate::store::{CrlInfo, RevokedEntry, Store, StoredCrl};

/// One CRL, ready to serve. The bytes are reference-counted, so answering a request clones a
/// pointer, not a CRL that may be megabytes long.
pub struct CrlDoc {
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: i64,
    /// The revocation sequence number this CRL covers.
    pub revocation_seq: i64,
    pub der: Bytes,
    pub pem: Bytes,
    pub etag: String,
}

/// Both CRLs and their concatenation, as served.
pub struct Published {
    pub intermediate: CrlDoc,
    pub root: CrlDoc,
    /// Intermediate CRL then root CRL, PEM: what nginx `ssl_crl` wants.
    pub combined_pem: Bytes,
    pub combined_etag: String,
}

fn etag(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    format!("\"{}\"", &hex::encode(ctx.finish())[..32])
}

impl CrlDoc {
    fn new(s: StoredCrl, pem: Bytes) -> Self {
        CrlDoc {
            number: s.info.number,
            this_update: s.info.this_update,
            next_update: s.info.next_update,
            entries: s.info.entries,
            revocation_seq: s.info.revocation_seq,
            etag: etag(&[&s.der]),
            pem,
            der: Bytes::from(s.der),
        }
    }
}

impl Published {
    fn new(intermediate: StoredCrl, root: StoredCrl) -> Self {
        // Both PEM documents live in one buffer, served whole as crls.pem and in parts for
        // ?format=pem, so the largest text is held once.
        let mut pem = crate::pem::encode("X509 CRL", &intermediate.der);
        let split = pem.len();
        pem.push_str(&crate::pem::encode("X509 CRL", &root.der));
        let combined = Bytes::from(pem.into_bytes());
        Published {
            combined_etag: etag(&[&combined]),
            intermediate: CrlDoc::new(intermediate, combined.slice(..split)),
            root: CrlDoc::new(root, combined.slice(split..)),
            combined_pem: combined,
        }
    }
}

pub struct CrlPublisher {
    ca: Arc<Ca>,
    store: Store,
    validity: Duration,
    publish_delay: Duration,
    current: ArcSwap<Option<Arc<Published>>>,
    changed: watch::Sender<Option<Arc<Published>>>,
    wake: Notify,
    build_lock: tokio::sync::Mutex<()>,
}

impl CrlPublisher {
    pub fn new(
        ca: Arc<Ca>,
        store: Store,
        validity: Duration,
        publish_delay: Duration,
    ) -> Arc<Self> {
        let (changed, _) = watch::channel(None);
        Arc::new(CrlPublisher {
            ca,
            store,
            validity,
            publish_delay,
            current: ArcSwap::from_pointee(None),
            changed,
            wake: Notify::new(),
            build_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The CRLs being served, if any have been built yet.
    pub fn current(&self) -> Option<Arc<Published>> {
        self.current.load().as_ref().clone()
    }

    /// Subscribes to new CRLs, for the TLS verifier.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Published>>> {
        self.changed.subscribe()
    }

    /// Asks for a prompt rebuild; bursts of calls are batched into one build.
    pub fn revocation_happened(&self) {
        self.wake.notify_one();
    }

    /// Loads the stored CRLs, building them if absent or stale, before the server starts.
    pub async fn start(&self) -> anyhow::Result<()> {
        self.refresh(true)
            .await
            .map_err(|e| anyhow::anyhow!("preparing CRLs: {}", e.detail))
    }

    /// Runs until the process ends: reacts to revocations here and, by polling the store,
    /// at other replicas.
    pub async fn run(self: Arc<Self>) {
        // Poll often enough that a revocation at another replica is published within the
        // configured delay, and at least once a second.
        let poll =
            (self.publish_delay / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        // Batch a burst of revocations into one build, within the publish delay.
        let batch = (self.publish_delay / 5).min(Duration::from_millis(500));
        loop {
            let woken = tokio::select! {
                _ = self.wake.notified() => true,
                _ = tokio::time::sleep(poll) => false,
            };
            if woken {
                tokio::time::sleep(batch).await;
            }
            if let Err(e) = self.refresh(false).await {
                tracing::warn!(error = %e, "refreshing CRLs failed; serving the previous ones");
            }
        }
    }

    /// Brings the served CRLs up to date: adopts a newer stored pair, or builds a new one
    /// when the stored pair misses a revocation or is past half its validity. Polling reads
    /// only the stored CRLs' numbers; their bytes are read when they are adopted.
    async fn refresh(&self, startup: bool) -> Result<()> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let stored = self.stored().await?;
        if self.is_stale(stored, now).await? {
            return self.build(now).await;
        }
        if let Some((i, r)) = stored {
            self.adopt(i, r, startup).await?;
        }
        Ok(())
    }

    async fn stored(&self) -> Result<Option<(CrlInfo, CrlInfo)>> {
        let i = self
            .store
            .latest_crl_info(CrlScope::Intermediate.as_str())
            .await?;
        let r = self.store.latest_crl_info(CrlScope::Root.as_str()).await?;
        Ok(i.zip(r))
    }

    /// True when the stored pair is missing, misses a committed revocation, or is past half
    /// its validity.
    async fn is_stale(&self, stored: Option<(CrlInfo, CrlInfo)>, now: i64) -> Result<bool> {
        let Some((i, r)) = stored else {
            return Ok(true);
        };
        let seq = self.store.revocation_seq().await?;
        let half = self.validity.as_secs() as i64 / 2;
        Ok(i.revocation_seq.min(r.revocation_seq) < seq
            || now >= i.this_update + half
            || now >= r.this_update + half)
    }

    /// Serves a stored pair unless it is the one already served. A pair replaced while it
    /// was being read is left for the next poll.
    async fn adopt(&self, i: CrlInfo, r: CrlInfo, force: bool) -> Result<()> {
        let served = self
            .current()
            .map(|p| (p.intermediate.number, p.root.number));
        if !force && served == Some((i.number, r.number)) {
            return Ok(());
        }
        let int_der = self
            .store
            .crl_der(CrlScope::Intermediate.as_str(), i.number)
            .await?;
        let root_der = self
            .store
            .crl_der(CrlScope::Root.as_str(), r.number)
            .await?;
        if let (Some(int_der), Some(root_der)) = (int_der, root_der) {
            let int = StoredCrl {
                info: i,
                der: int_der,
            };
            let root = StoredCrl {
                info: r,
                der: root_der,
            };
            self.publish(int, root).await?;
        }
        Ok(())
    }

    /// Builds, stores and serves both CRLs, unless another replica is building them now or
    /// built them while this one waited for the lock.
    async fn build(&self, now: i64) -> Result<()> {
        let _local = self.build_lock.lock().await;
        let Some(_lock) = self.store.try_crl_build_lock().await? else {
            tracing::debug!("another replica is building CRLs");
            return Ok(());
        };
        let stored = self.stored().await?;
        if !self.is_stale(stored, now).await? {
            if let Some((i, r)) = stored {
                self.adopt(i, r, false).await?;
            }
            return Ok(());
        }
        let started = std::time::Instant::now();
        let int = self.build_one(CrlScope::Intermediate, now).await?;
        let root = self.build_one(CrlScope::Root, now).await?;
        let (Some(int), Some(root)) = (int, root) else {
            // A newer pair was stored meanwhile; serve that one instead.
            if let Some((i, r)) = self.stored().await? {
                self.adopt(i, r, false).await?;
            }
            return Ok(());
        };
        tracing::info!(
            number = int.info.number,
            entries = int.info.entries,
            revocation_seq = int.info.revocation_seq,
            bytes = int.der.len(),
            millis = started.elapsed().as_millis() as u64,
            "published CRLs"
        );
        self.publish(int, root).await
    }

    /// Builds and stores one CRL. `None` when a CRL with a larger number was stored first.
    async fn build_one(&self, scope: CrlScope, now: i64) -> Result<Option<StoredCrl>> {
        let issuer = match scope {
            CrlScope::Intermediate => &self.ca.intermediate,
            CrlScope::Root => &self.ca.root,
        };
        let started = std::time::Instant::now();
        // Rows become CRL entries as they arrive: only the compact form is ever held.
        // Known shortcoming: every build reads all revoked rows again, about 3 to 5 seconds per
        // million on two cores, so from roughly a million unexpired revocations a build no
        // longer fits the default publish delay; keeping the previous build's entries and
        // reading only revocations with a larger sequence number would fix that.
        let mut list = Vec::new();
        let revocation_seq = self
            .store
            .for_each_revoked(&hex::encode(&issuer.key_id), now, |e| {
                list.push(crl_entry(e)?);
                Ok(())
            })
            .await?;
        let read = started.elapsed();
        let number = self.store.next_crl_number(scope.as_str()).await?;
        let ca = self.ca.clone();
        let validity = time::Duration::try_from(self.validity)
            .map_err(|_| Error::internal("CRL validity out of range"))?;
        let count = list.len() as i64;
        let der = tokio::task::spawn_blocking(move || {
            let this_update = OffsetDateTime::from_unix_timestamp(now)
                .map_err(|e| Error::internal(format!("CRL thisUpdate: {e}")))?;
            ca.sign_crl(
                scope,
                number as u64,
                this_update,
                this_update + validity,
                list,
            )
        })
        .await
        .map_err(|e| Error::internal(format!("CRL task failed: {e}")))??;
        let signed = started.elapsed();
        let stored = StoredCrl {
            info: CrlInfo {
                number,
                this_update: now,
                next_update: now + self.validity.as_secs() as i64,
                entries: count,
                revocation_seq,
            },
            der,
        };
        let kept = self.store.store_crl(scope.as_str(), &stored).await?;
        tracing::debug!(
            scope = scope.as_str(),
            number,
            entries = count,
            read_millis = read.as_millis() as u64,
            sign_millis = (signed - read).as_millis() as u64,
            store_millis = (started.elapsed() - signed).as_millis() as u64,
            "built CRL"
        );
        Ok(kept.then_some(stored))
    }

    /// Serves a pair. Encoding it as PEM and hashing it takes a while for a large CRL, so
    /// that runs off the threads that serve requests.
    async fn publish(&self, int: StoredCrl, root: StoredCrl) -> Result<()> {
        let p = tokio::task::spawn_blocking(move || Published::new(int, root))
            .await
            .map_err(|e| Error::internal(format!("CRL encoding task failed: {e}")))?;
        let p = Arc::new(p);
        self.current.store(Arc::new(Some(p.clone())));
        self.changed.send_replace(Some(p));
        Ok(())
    }
}

/// Reads one stored revocation. An entry that cannot be read fails the whole build: a CRL that
/// silently left out a revoked certificate would be worse than the previous CRL.
fn crl_entry(e: RevokedEntry) -> Result<CrlEntry> {
    let serial = Serial::parse(&e.serial)
        .map_err(|err| Error::internal(format!("stored serial {:?}: {}", e.serial, err.detail)))?;
    let revoked_at = OffsetDateTime::from_unix_timestamp(e.revoked_at)
        .map_err(|err| Error::internal(format!("revocation time of {serial}: {err}")))?;
    let reason = match e.reason.as_deref() {
        None => None,
        Some(name) => Some(ca::reason_code(name).ok_or_else(|| {
            Error::internal(format!(
                "revocation reason {name:?} of {serial} is not known"
            ))
        })?),
    };
    Ok(CrlEntry::new(&serial, revoked_at, reason))
}

/// Checks a client certificate chain against the CRLs being served, with rustls' own
/// verifier, rebuilt for each new CRL. Renewal asks it first, so a certificate listed in the
/// served CRL is refused with a problem+json answer that names the CRL; the database check
/// that follows also catches revocations too new to be in any CRL.
pub struct RevocationCheck {
    root: rustls::pki_types::CertificateDer<'static>,
    current: ArcSwap<Option<(i64, Arc<dyn rustls::server::danger::ClientCertVerifier>)>>,
}

impl RevocationCheck {
    pub fn new(root_der: &[u8]) -> Self {
        RevocationCheck {
            root: root_der.to_vec().into(),
            current: ArcSwap::from_pointee(None),
        }
    }

    /// Builds a verifier for `published`. Parsing a large CRL takes a while: call it off the
    /// threads that serve requests.
    pub fn update(&self, published: &Published) -> anyhow::Result<()> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone())?;
        let crls = vec![
            published.intermediate.der.to_vec().into(),
            published.root.der.to_vec().into(),
        ];
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .build()?;
        self.current
            .store(Arc::new(Some((published.intermediate.number, verifier))));
        Ok(())
    }

    /// Refuses a chain whose leaf or intermediate a served CRL lists. Other verification
    /// failures (an expired leaf) are left to the authority, which answers them from the
    /// database.
    pub fn check(&self, chain: &[Vec<u8>]) -> Result<()> {
        let Some((number, verifier)) = self.current.load().as_ref().clone() else {
            return Ok(());
        };
        let Some((leaf, rest)) = chain.split_first() else {
            return Ok(());
        };
        let leaf = rustls::pki_types::CertificateDer::from(leaf.as_slice());
        let intermediates: Vec<_> = rest
            .iter()
            .map(|c| rustls::pki_types::CertificateDer::from(c.as_slice()))
            .collect();
        let now = rustls::pki_types::UnixTime::now();
        match verifier.verify_client_cert(&leaf, &intermediates, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
                Err(Error::forbidden(
                    "certificate-revoked",
                    format!(
                        "the client certificate is listed as revoked in CRL number {number}; \
                         request a new certificate with a token"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CaFiles, InitOptions};
    use crate::store::{NewAuditEvent, NewCertificate};

    async fn setup(dir: &std::path::Path) -> (Arc<Ca>, Store) {
        let files = CaFiles::new(dir);
        Ca::create(
            &files,
            &InitOptions {
                organization: "test".into(),
            },
        )
        .unwrap();
        let ca = Arc::new(Ca::load(&files).unwrap());
        let url = format!("sqlite://{}?mode=rwc", dir.join("sigil.db").display());
        (ca, Store::connect(&url, 2).await.unwrap())
    }

    async fn record(store: &Store, ca: &Ca, serial: &str, now: i64) {
        let cert = NewCertificate {
            serial: serial.into(),
            issuer_key_id: hex::encode(&ca.intermediate.key_id),
            identity: "payments".into(),
            sans: vec!["payments.internal".into()],
            not_before: now - 60,
            not_after: now + 3600,
            key_fingerprint: "00".repeat(32),
            key_type: "p256".into(),
            der: vec![0x30, 0x00],
            token: None,
            provisioner: None,
            renewed_from: None,
            created_at: now,
        };
        let audit = NewAuditEvent {
            action: "issue",
            actor: "test".into(),
            identity: Some("payments".into()),
            serial: Some(serial.into()),
            detail: serde_json::json!({}),
        };
        store.record_issuance(&cert, &audit).await.unwrap();
    }

    #[tokio::test]
    async fn a_revocation_stamped_by_a_slow_clock_is_still_published() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, store) = setup(dir.path()).await;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        record(&store, &ca, "7f01", now).await;
        let publisher = CrlPublisher::new(
            ca.clone(),
            store.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        publisher.start().await.unwrap();
        let first = publisher.current().unwrap();
        assert_eq!(first.intermediate.entries, 0);

        // A replica whose clock is an hour behind records the revocation: its time is older
        // than the CRL being served, yet the CRL must be rebuilt to list it.
        store
            .revoke_certificate("7f01", "keyCompromise", now - 3600, "test")
            .await
            .unwrap();
        publisher.refresh(false).await.unwrap();
        let second = publisher.current().unwrap();
        assert_eq!(second.intermediate.entries, 1);
        assert!(second.intermediate.number > first.intermediate.number);

        // With nothing new, polling adopts and serves the same CRL without rebuilding.
        publisher.refresh(false).await.unwrap();
        let third = publisher.current().unwrap();
        assert_eq!(third.intermediate.number, second.intermediate.number);
        assert_eq!(third.root.number, second.root.number);
    }

    #[tokio::test]
    async fn a_repeated_revocation_does_not_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, store) = setup(dir.path()).await;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        record(&store, &ca, "7f02", now).await;
        store
            .revoke_certificate("7f02", "superseded", now, "test")
            .await
            .unwrap();
        let publisher = CrlPublisher::new(
            ca,
            store.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        publisher.start().await.unwrap();
        let built = publisher.current().unwrap().intermediate.number;
        let again = store
            .revoke_certificate("7f02", "cessationOfOperation", now + 5, "test")
            .await
            .unwrap();
        assert!(!again.changed);
        publisher.refresh(false).await.unwrap();
        assert_eq!(publisher.current().unwrap().intermediate.number, built);
        let upgrade = store
            .revoke_certificate("7f02", "keyCompromise", now + 6, "test")
            .await
            .unwrap();
        assert!(upgrade.changed);
        publisher.refresh(false).await.unwrap();
        assert!(publisher.current().unwrap().intermediate.number > built);
    }
}
