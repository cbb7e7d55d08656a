//! Builds, stores and publishes CRLs.
//!
//! Each replica serves the newest stored CRL from memory. A CRL is rebuilt when a revocation
//! is newer than the CRL being served (whichever replica recorded it) and on a schedule, at
//! half its validity, well before nextUpdate. Builds are serialized across replicas by the
//! store's CRL lock; the CRL number comes from a counter row, so it only grows.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify};

use crate::ca::{self, Ca, CrlEntry, CrlScope};
use crate::error::{Error, Result};
use crate::names::Serial;
use crate::store::{Store, StoredCrl};

/// One CRL, ready to serve.
pub struct CrlDoc {
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: i64,
    pub der: bytes_like::Bytes,
    pub pem: bytes_like::Bytes,
    pub etag: String,
}

/// Both CRLs and their concatenation, as served.
pub struct Published {
    pub intermediate: CrlDoc,
    pub root: CrlDoc,
    /// Intermediate CRL then root CRL, PEM: what nginx `ssl_crl` wants.
    pub combined_pem: bytes_like::Bytes,
    pub combined_etag: String,
}

/// Re-export so the HTTP layer can hand out cheap clones of the served bytes.
pub mod bytes_like {
    pub type Bytes = std::sync::Arc<[u8]>;
}

fn etag(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    format!("\"{}\"", &hex::encode(ctx.finish())[..32])
}

impl CrlDoc {
    fn from_stored(s: StoredCrl) -> Self {
        let pem = crate::pem::encode("X509 CRL", &s.der);
        CrlDoc {
            number: s.number,
            this_update: s.this_update,
            next_update: s.next_update,
            entries: s.entries,
            etag: etag(&[&s.der]),
            pem: pem.into_bytes().into(),
            der: s.der.into(),
        }
    }
}

impl Published {
    fn new(intermediate: CrlDoc, root: CrlDoc) -> Self {
        let combined: Vec<u8> = [&intermediate.pem[..], &root.pem[..]].concat();
        Published {
            combined_etag: etag(&[&combined]),
            combined_pem: combined.into(),
            intermediate,
            root,
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

    /// Brings the served CRLs up to date: adopts a newer stored one, or builds when a
    /// revocation is newer than the stored one or it is past half its validity.
    async fn refresh(&self, startup: bool) -> Result<()> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let stored = (
            self.store.latest_crl("intermediate").await?,
            self.store.latest_crl("root").await?,
        );
        let last_revocation = self.store.last_revocation_at().await?;
        let needs_build = match &stored {
            (Some(i), Some(r)) => {
                let half = self.validity.as_secs() as i64 / 2;
                last_revocation >= i.this_update
                    || now >= i.this_update + half
                    || now >= r.this_update + half
            }
            _ => true,
        };
        if needs_build {
            return self.build(now).await;
        }
        if let (Some(i), Some(r)) = stored {
            let served = self
                .current()
                .map(|p| (p.intermediate.number, p.root.number));
            if startup || served != Some((i.number, r.number)) {
                self.publish(Published::new(
                    CrlDoc::from_stored(i),
                    CrlDoc::from_stored(r),
                ));
            }
        }
        Ok(())
    }

    /// Builds and stores both CRLs, if no other replica is building them now.
    async fn build(&self, now: i64) -> Result<()> {
        let _local = self.build_lock.lock().await;
        let Some(_lock) = self.store.try_crl_build_lock().await? else {
            tracing::debug!("another replica is building CRLs");
            return Ok(());
        };
        let started = std::time::Instant::now();
        let int = self.build_one(CrlScope::Intermediate, now).await?;
        let root = self.build_one(CrlScope::Root, now).await?;
        tracing::info!(
            number = int.number,
            entries = int.entries,
            bytes = int.der.len(),
            millis = started.elapsed().as_millis() as u64,
            "published CRLs"
        );
        self.publish(Published::new(int, root));
        Ok(())
    }

    async fn build_one(&self, scope: CrlScope, now: i64) -> Result<CrlDoc> {
        let issuer = match scope {
            CrlScope::Intermediate => &self.ca.intermediate,
            CrlScope::Root => &self.ca.root,
        };
        let entries = self
            .store
            .revoked_entries(&hex::encode(&issuer.key_id), now)
            .await?;
        let number = self.store.next_crl_number(scope.as_str()).await?;
        let ca = self.ca.clone();
        let validity = time::Duration::try_from(self.validity)
            .map_err(|_| Error::internal("CRL validity out of range"))?;
        let count = entries.len() as i64;
        let der = tokio::task::spawn_blocking(move || {
            let this_update = OffsetDateTime::from_unix_timestamp(now)
                .map_err(|e| Error::internal(e.to_string()))?;
            let list: Vec<CrlEntry> = entries
                .into_iter()
                .filter_map(|e| {
                    Some(CrlEntry {
                        serial: Serial::parse(&e.serial).ok()?,
                        revoked_at: OffsetDateTime::from_unix_timestamp(e.revoked_at).ok()?,
                        reason: e.reason.as_deref().and_then(ca::reason_code),
                    })
                })
                .collect();
            ca.sign_crl(
                scope,
                number as u64,
                this_update,
                this_update + validity,
                &list,
            )
        })
        .await
        .map_err(|e| Error::internal(format!("CRL task failed: {e}")))??;
        let stored = StoredCrl {
            number,
            this_update: now,
            next_update: now + self.validity.as_secs() as i64,
            entries: count,
            der,
        };
        self.store.store_crl(scope.as_str(), &stored).await?;
        Ok(CrlDoc::from_stored(stored))
    }

    fn publish(&self, p: Published) {
        let p = Arc::new(p);
        self.current.store(Arc::new(Some(p.clone())));
        self.changed.send_replace(Some(p));
    }
}
