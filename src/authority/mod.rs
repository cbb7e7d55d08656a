//! The part that decides. It authenticates callers (bootstrap token, peer certificate, admin
//! key), applies policy, and hands the signer a finished template. It knows nothing of HTTP
//! or SQL: requests arrive as plain values and records leave through the store's interface.
//!
//! The issuance path is [`Authority::sign`], readable top to bottom; its numbered steps match
//! the list in ARCHITECTURE.md.

pub mod csr;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{self, Ca, LeafTemplate, SignedLeaf};
use crate::config::Settings;
use crate::crl::CrlPublisher;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::names::{parse_duration, Identity, San, Serial};
use crate::policy::{self, Decision, PolicySet, ADMIN_PROVISIONER};
use crate::store::{CertificateRecord, NewAuditEvent, NewCertificate, SpentToken, Store};
use crate::token::{self, Claims, Expectations, SigningKey};
pub use csr::VerifiedCsr;

/// A certificate as returned to the workload, and as the client side reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub serial: String,
    /// The leaf, PEM.
    pub certificate: String,
    /// The leaf followed by the intermediate, PEM.
    pub chain: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// A freshly made bootstrap token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenGrant {
    pub token: String,
    pub jti: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Who is making an admin call: the id of their admin key, never the key itself.
#[derive(Debug, Clone)]
pub struct AdminCaller {
    pub key_id: String,
}

impl AdminCaller {
    fn actor(&self) -> String {
        format!("admin-key:{}", self.key_id)
    }
}

/// The RFC 5280 revocation reasons accepted by the API.
pub const REASONS: &[&str] = &[
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
];

pub fn now_secs() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Prefix of admin keys, so that a leaked one is recognizable in logs and secret scanners.
pub const ADMIN_KEY_PREFIX: &str = "sigil_admin_";

/// Makes a new admin key: returns (id, full key, SHA-256 hex of the full key).
pub fn new_admin_key() -> Result<(String, String, String)> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    let rng = ring::rand::SystemRandom::new();
    rng.fill(&mut id)
        .map_err(|_| Error::internal("the random generator failed"))?;
    rng.fill(&mut secret)
        .map_err(|_| Error::internal("the random generator failed"))?;
    let id = hex::encode(id);
    let key = format!(
        "{ADMIN_KEY_PREFIX}{id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let hash = ca::sha256_hex(key.as_bytes());
    Ok((id, key, hash))
}

/// Decides and issues. Issuance and renewal check two signatures and make one: about 150 µs
/// of CPU with the P-256 keys `sigil init` makes. That work runs on the async worker thread
/// that handles the request: the body limit bounds the CSR, and the hand-off to a blocking-pool
/// thread and back cost two thread wake-ups per request, which under load took more CPU than
/// the short stall it avoided. With an imported CA key that signs slowly (RSA, P-384) it runs
/// on the blocking pool, as a stall of milliseconds would hold up the other requests.
pub struct Authority {
    pub settings: Arc<Settings>,
    pub ca: Arc<Ca>,
    pub store: Store,
    pub crl: Arc<CrlPublisher>,
    /// Renewal's check of client certificates against the CRLs being served.
    pub revocation_check: crate::crl::RevocationCheck,
    pub metrics: Arc<Metrics>,
    policies: ArcSwap<PolicySet>,
    admin_signer: SigningKey,
    intermediate_key_id: String,
}

impl Authority {
    pub fn new(
        settings: Arc<Settings>,
        ca: Arc<Ca>,
        store: Store,
        crl: Arc<CrlPublisher>,
        metrics: Arc<Metrics>,
        admin_signer: SigningKey,
    ) -> Result<Self> {
        let policies = load_policies(&settings, &admin_signer)?;
        let intermediate_key_id = hex::encode(&ca.intermediate.key_id);
        Ok(Authority {
            settings,
            revocation_check: crate::crl::RevocationCheck::new(&ca.root.der),
            ca,
            store,
            crl,
            metrics,
            policies: ArcSwap::from_pointee(policies),
            admin_signer,
            intermediate_key_id,
        })
    }

    pub fn policies(&self) -> Arc<PolicySet> {
        self.policies.load_full()
    }

    /// Loads the policy directory again and puts the new set in force, returning it. On
    /// error the set in force stays, and the error is returned for the log.
    pub fn reload_policies(&self) -> Result<Arc<PolicySet>> {
        let set = Arc::new(load_policies(&self.settings, &self.admin_signer)?);
        self.policies.store(set.clone());
        Ok(set)
    }

    /// Runs the CPU work of an issuance or renewal where `Authority` explains.
    async fn cpu<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if self.ca.signs_quickly() {
            return work();
        }
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::internal(format!("issuance task failed: {e}")))?
    }

    /// Issues a certificate for a CSR, authorized by a bootstrap token.
    pub async fn sign(
        &self,
        csr_pem: String,
        token: String,
        ttl: Option<String>,
    ) -> Result<Issued> {
        let policies = self.policies();
        let (settings, ca) = (self.settings.clone(), self.ca.clone());
        let now = OffsetDateTime::now_utc();

        // Steps 1 to 5 are CPU work, two signature checks and one signature; see `Authority`
        // for where they run.
        let (claims, identity, signed) = self
            .cpu(move || {
                // Step 1: parse the request. The CSR's self-signature proves possession of the key.
                let csr = VerifiedCsr::from_pem(&csr_pem)?;
                let ttl = ttl.as_deref().map(parse_duration).transpose()?;

                // Step 2: authenticate the token: provisioner, pinned algorithm, audience,
                // lifetime.
                let unverified = token::parse(&token)?;
                let Some(provisioner) = policies.provisioner(&unverified.claims.iss) else {
                    return Err(Error::unauthenticated(
                        "unknown-provisioner",
                        format!(
                            "token names provisioner {:?}, which this CA does not know",
                            unverified.claims.iss
                        ),
                    ));
                };
                let expect = Expectations {
                    audience: &settings.audience,
                    now: now.unix_timestamp(),
                    max_lifetime_secs: provisioner.max_token_lifetime.as_secs() as i64,
                };
                let claims = unverified.verify(&provisioner.key, &expect)?;
                let identity = Identity::parse(&claims.sub).map_err(|e| {
                    Error::unauthenticated("bad-token", format!("token subject: {}", e.detail))
                })?;

                // Step 3: names. Every requested name must be in the token (deny by default).
                let token_sans = parse_token_sans(&claims)?;
                let spiffe = spiffe_id(&settings, &identity);
                let requested = if csr.sans.is_empty() {
                    token_sans.clone()
                } else {
                    csr.sans.clone()
                };
                let mut sans = Vec::new();
                for san in requested {
                    if Some(&san) == spiffe.as_ref() {
                        continue;
                    }
                    if !token_sans.contains(&san) {
                        return Err(Error::forbidden(
                            "name-not-in-token",
                            format!(
                                "name {san} is not among the names the token allows ({})",
                                join(&token_sans)
                            ),
                        ));
                    }
                    sans.push(san);
                }

                // Step 4: policy decides names, lifetime and key type for this identity.
                let decision = policies
                    .evaluate(&policy::Request {
                        provisioner,
                        identity: &identity,
                        sans: &sans,
                        ttl,
                        key: Some(csr.key_kind),
                    })
                    .inspect_err(|e| {
                        tracing::info!(
                            service = %identity,
                            provisioner = %provisioner.name,
                            jti = %claims.jti,
                            code = e.code,
                            reason = %e.detail,
                            "policy refused certificate"
                        );
                    })?;

                // Step 5: the signer signs the decided template.
                let signed = sign_template(&ca, &settings, &identity, &csr, decision, spiffe, now)?;
                Ok((claims, identity, signed))
            })
            .await?;

        // Step 6: one transaction spends the token and records the certificate and audit
        // event. A replayed token or a disabled identity aborts it and nothing is written.
        let cert = self.new_record(&signed, &identity, now)?;
        let record = NewCertificate {
            token: Some(SpentToken {
                jti: claims.jti.clone(),
                provisioner: claims.iss.clone(),
                expires_at: claims.exp,
            }),
            provisioner: Some(claims.iss.clone()),
            ..cert
        };
        let audit = NewAuditEvent {
            action: "issue",
            actor: format!("provisioner:{}", claims.iss),
            identity: Some(identity.to_string()),
            serial: Some(signed.serial.to_string()),
            detail: serde_json::json!({
                "jti": claims.jti,
                "sans": record.sans,
                "not_after": record.not_after,
            }),
        };
        self.store.record_issuance(&record, &audit).await?;

        // Step 7: only now, after commit, does the certificate leave.
        tracing::info!(
            serial = %signed.serial,
            service = %identity,
            provisioner = %claims.iss,
            jti = %claims.jti,
            "issued certificate"
        );
        Ok(self.issued(signed))
    }

    /// Renews the certificate presented over mTLS for a new key. The TLS layer has already
    /// checked that the chain leads to this CA's root and that the CRL does not list it; here
    /// the database has the last word, since a revocation may be newer than the CRL.
    pub async fn renew(
        &self,
        peer_chain: Option<&[Vec<u8>]>,
        csr_pem: String,
        ttl: Option<String>,
    ) -> Result<Issued> {
        let Some(leaf_der) = peer_chain.and_then(|c| c.first()) else {
            return Err(Error::unauthenticated(
                "no-client-certificate",
                "renewal needs the current certificate: \
                 connect with it and its key as a TLS client certificate",
            ));
        };
        // A certificate the served CRL lists is refused before anything else.
        if let Some(chain) = peer_chain {
            self.revocation_check.check(chain)?;
        }
        let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| {
            Error::unauthenticated(
                "bad-client-certificate",
                format!("parsing client certificate: {e}"),
            )
        })?;
        let serial = Serial::from_be_bytes(leaf.raw_serial());
        let now = OffsetDateTime::now_utc();
        let Some(old) = self
            .store
            .certificate(serial.as_str(), now.unix_timestamp())
            .await?
        else {
            return Err(Error::forbidden(
                "unknown-certificate",
                format!(
                    "certificate {serial} was not issued by this CA's records; \
                     request a new one with a token"
                ),
            ));
        };
        match old.status {
            "revoked" => {
                return Err(Error::forbidden(
                    "certificate-revoked",
                    format!(
                        "certificate {serial} is revoked and cannot renew; \
                         request a new one with a token"
                    ),
                ))
            }
            "expired" => {
                return Err(Error::unauthenticated(
                    "certificate-expired",
                    format!("certificate {serial} has expired; request a new one with a token"),
                ))
            }
            _ => {}
        }
        if !self.store.identity_enabled(&old.identity).await? {
            return Err(Error::forbidden(
                "identity-disabled",
                format!(
                    "identity {:?} is disabled; an operator must enable it first",
                    old.identity
                ),
            ));
        }
        let policies = self.policies();
        let (settings, ca) = (self.settings.clone(), self.ca.clone());
        let old_for_task = old.clone();
        let signed = self
            .cpu(move || {
                let old = old_for_task;
                let csr = VerifiedCsr::from_pem(&csr_pem)?;
                let ttl = ttl.as_deref().map(parse_duration).transpose()?;
                let identity = Identity::parse(&old.identity)?;
                let spiffe = spiffe_id(&settings, &identity);
                let old_sans: Vec<San> =
                    old.sans.iter().filter_map(|s| San::parse(s).ok()).collect();
                let mut sans = Vec::new();
                let requested = if csr.sans.is_empty() {
                    old_sans.clone()
                } else {
                    csr.sans.clone()
                };
                for san in requested {
                    if Some(&san) == spiffe.as_ref() {
                        continue;
                    }
                    if !old_sans.contains(&san) {
                        return Err(Error::forbidden(
                            "name-not-in-certificate",
                            format!(
                                "renewal may not add names: {san} is not in certificate {}",
                                old.serial
                            ),
                        ));
                    }
                    sans.push(san);
                }
                let provisioner_name = old.provisioner.as_deref().unwrap_or(ADMIN_PROVISIONER);
                let Some(provisioner) = policies.provisioner(provisioner_name) else {
                    return Err(Error::forbidden(
                        "unknown-provisioner",
                        format!(
                            "provisioner {provisioner_name:?} that authorized this identity \
                         no longer exists"
                        ),
                    ));
                };
                let decision = policies.evaluate(&policy::Request {
                    provisioner,
                    identity: &identity,
                    sans: &sans,
                    ttl,
                    key: Some(csr.key_kind),
                })?;
                sign_template(&ca, &settings, &identity, &csr, decision, spiffe, now)
            })
            .await?;

        let record = NewCertificate {
            renewed_from: Some(old.serial.clone()),
            provisioner: old.provisioner.clone(),
            ..self.new_record(&signed, &Identity::parse(&old.identity)?, now)?
        };
        let audit = NewAuditEvent {
            action: "renew",
            actor: format!("certificate:{}", old.serial),
            identity: Some(old.identity.clone()),
            serial: Some(signed.serial.to_string()),
            detail: serde_json::json!({
                "renewed_from": old.serial,
                "not_after": record.not_after,
            }),
        };
        self.store.record_issuance(&record, &audit).await?;
        tracing::info!(
            serial = %signed.serial,
            service = %old.identity,
            renewed_from = %old.serial,
            "renewed certificate"
        );
        Ok(self.issued(signed))
    }

    fn new_record(
        &self,
        signed: &SignedLeaf,
        identity: &Identity,
        now: OffsetDateTime,
    ) -> Result<NewCertificate> {
        let (_, cert) = X509Certificate::from_der(&signed.der)
            .map_err(|e| Error::internal(format!("reading back signed certificate: {e}")))?;
        let sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(general_name_text)
                    .collect()
            })
            .unwrap_or_default();
        let key_kind = ca::KeyKind::of_spki(cert.public_key().raw)?;
        Ok(NewCertificate {
            serial: signed.serial.to_string(),
            issuer_key_id: self.intermediate_key_id.clone(),
            identity: identity.to_string(),
            sans,
            not_before: signed.not_before.unix_timestamp(),
            not_after: signed.not_after.unix_timestamp(),
            key_fingerprint: ca::sha256_hex(cert.public_key().raw),
            key_type: key_kind.name(),
            der: signed.der.clone(),
            token: None,
            provisioner: None,
            renewed_from: None,
            created_at: now.unix_timestamp(),
        })
    }

    fn issued(&self, signed: SignedLeaf) -> Issued {
        Issued {
            serial: signed.serial.to_string(),
            chain: format!("{}{}", signed.pem, self.ca.intermediate.pem),
            certificate: signed.pem,
            not_before: signed.not_before,
            not_after: signed.not_after,
        }
    }

    /// Checks an `Authorization: Bearer` admin key in constant time against every stored hash.
    pub async fn authenticate_admin(&self, authorization: Option<&str>) -> Result<AdminCaller> {
        let Some(value) = authorization else {
            return Err(Error::unauthenticated(
                "missing-admin-key",
                "this endpoint needs an admin key: send Authorization: Bearer <admin key>",
            ));
        };
        let Some(key) = value.strip_prefix("Bearer ").map(str::trim) else {
            return Err(Error::unauthenticated(
                "bad-admin-key",
                "Authorization must be of the form: Bearer <admin key>",
            ));
        };
        let presented = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut found: Option<String> = None;
        for (id, hash_hex) in self.store.admin_key_hashes().await? {
            let stored = hex::decode(&hash_hex).unwrap_or_default();
            // Every stored hash is compared, match or not, so timing says nothing of which.
            if bool::from(stored.ct_eq(presented.as_ref())) {
                found = Some(id);
            }
        }
        match found {
            Some(key_id) => Ok(AdminCaller { key_id }),
            None => Err(Error::unauthenticated(
                "bad-admin-key",
                "admin key is not valid",
            )),
        }
    }

    /// Mints a token with the built-in provisioner, for an operator.
    pub async fn create_token(
        &self,
        caller: &AdminCaller,
        service: &str,
        sans: &[String],
        ttl: Option<&str>,
    ) -> Result<TokenGrant> {
        let identity = Identity::parse(service)?;
        let parsed: Vec<San> = sans.iter().map(|s| San::parse(s)).collect::<Result<_>>()?;
        if !self.store.identity_enabled(identity.as_str()).await? {
            return Err(Error::forbidden(
                "identity-disabled",
                format!(
                    "identity {:?} is disabled; enable it (sigil enable --service {}) before \
                     making tokens for it",
                    identity.as_str(),
                    identity.as_str()
                ),
            ));
        }
        let lifetime = match ttl {
            Some(t) => parse_duration(t)?,
            None => self.settings.token_ttl,
        };
        let max = self.settings.max_token_lifetime;
        if lifetime > max {
            return Err(Error::forbidden(
                "ttl-too-long",
                format!(
                    "token lifetime {} is longer than the server's maximum of {}",
                    crate::names::format_duration(lifetime),
                    crate::names::format_duration(max)
                ),
            ));
        }
        // Refuse names that policy would refuse anyway, so the operator learns now and not
        // when the workload starts.
        let policies = self.policies();
        if let Some(admin) = policies.provisioner(ADMIN_PROVISIONER) {
            policies.evaluate(&policy::Request {
                provisioner: admin,
                identity: &identity,
                sans: &parsed,
                ttl: None,
                key: None,
            })?;
        }
        let now = now_secs();
        let claims = Claims {
            iss: ADMIN_PROVISIONER.into(),
            sub: identity.to_string(),
            sans: parsed.iter().map(|s| s.to_string()).collect(),
            aud: vec![self.settings.audience.clone()],
            iat: now,
            nbf: now,
            exp: now + lifetime.as_secs() as i64,
            jti: token::new_jti()?,
        };
        let token = token::mint(&self.admin_signer, &claims)?;
        let audit = NewAuditEvent {
            action: "create-token",
            actor: caller.actor(),
            identity: Some(identity.to_string()),
            serial: None,
            detail: serde_json::json!({
                "jti": claims.jti,
                "sans": claims.sans,
                "expires_at": claims.exp,
            }),
        };
        self.store.audit(now, &audit).await?;
        tracing::info!(
            service = %identity,
            jti = %claims.jti,
            admin_key = %caller.key_id,
            "created token"
        );
        Ok(TokenGrant {
            token,
            jti: claims.jti,
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
    }

    pub async fn certificate(&self, serial: &str) -> Result<CertificateRecord> {
        let serial = Serial::parse(serial)?;
        self.store
            .certificate(serial.as_str(), now_secs())
            .await?
            .ok_or_else(|| {
                Error::not_found(
                    "unknown-serial",
                    format!("no certificate has serial {serial}"),
                )
            })
    }

    pub async fn revoke_serial(
        &self,
        caller: &AdminCaller,
        serial: &str,
        reason: &str,
    ) -> Result<CertificateRecord> {
        let serial = Serial::parse(serial)?;
        check_reason(reason)?;
        let rev = self
            .store
            .revoke_certificate(serial.as_str(), reason, now_secs(), &caller.actor())
            .await?;
        if rev.changed {
            self.metrics.revocations.inc(reason);
            tracing::info!(
                serial = %serial,
                service = %rev.record.identity,
                reason,
                admin_key = %caller.key_id,
                "revoked certificate"
            );
            self.crl.revocation_happened();
        }
        Ok(rev.record)
    }

    pub async fn revoke_identity(
        &self,
        caller: &AdminCaller,
        service: &str,
        reason: &str,
    ) -> Result<u64> {
        let identity = Identity::parse(service)?;
        check_reason(reason)?;
        let n = self
            .store
            .revoke_identity(identity.as_str(), reason, now_secs(), &caller.actor())
            .await?;
        self.metrics.revocations.add(reason, n);
        tracing::warn!(
            service = %identity,
            revoked = n,
            reason,
            admin_key = %caller.key_id,
            "disabled identity and revoked its certificates"
        );
        self.crl.revocation_happened();
        Ok(n)
    }

    pub async fn enable_identity(&self, caller: &AdminCaller, service: &str) -> Result<()> {
        let identity = Identity::parse(service)?;
        self.store
            .enable_identity(identity.as_str(), now_secs(), &caller.actor())
            .await?;
        tracing::info!(service = %identity, admin_key = %caller.key_id, "enabled identity");
        Ok(())
    }
}

fn check_reason(reason: &str) -> Result<()> {
    if REASONS.contains(&reason) {
        Ok(())
    } else {
        Err(Error::malformed(
            "bad-reason",
            format!(
                "revocation reason {reason:?} is not one of: {}",
                REASONS.join(", ")
            ),
        ))
    }
}

fn load_policies(settings: &Settings, admin_signer: &SigningKey) -> Result<PolicySet> {
    PolicySet::from_settings(settings, admin_signer.verifying_key())
}

fn parse_token_sans(claims: &Claims) -> Result<Vec<San>> {
    claims
        .sans
        .iter()
        .map(|s| {
            San::parse(s).map_err(|e| {
                Error::unauthenticated("bad-token", format!("token sans: {}", e.detail))
            })
        })
        .collect()
}

fn spiffe_id(settings: &Settings, identity: &Identity) -> Option<San> {
    settings
        .trust_domain
        .as_ref()
        .map(|td| San::Uri(format!("spiffe://{td}/{identity}")))
}

fn join(sans: &[San]) -> String {
    if sans.is_empty() {
        return "none".into();
    }
    sans.iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn sign_template(
    ca: &Ca,
    settings: &Settings,
    identity: &Identity,
    csr: &VerifiedCsr,
    decision: Decision,
    spiffe: Option<San>,
    now: OffsetDateTime,
) -> Result<SignedLeaf> {
    let mut sans = decision.sans;
    sans.extend(spiffe);
    let ttl = time::Duration::try_from(decision.ttl.min(Duration::from_secs(10 * 365 * 86_400)))
        .map_err(|_| Error::internal("lifetime out of range"))?;
    ca.sign_leaf(&LeafTemplate {
        identity: identity.clone(),
        sans,
        spki_der: csr.spki_der.clone(),
        key_kind: csr.key_kind,
        not_before: now - ca::BACKDATE,
        not_after: now + ttl,
        crl_url: format!(
            "{}/v1/crl",
            settings
                .public_url
                .as_deref()
                .unwrap_or("https://localhost")
        ),
        server_auth: decision.server_auth,
        client_auth: decision.client_auth,
    })
}

fn general_name_text(n: &x509_parser::extensions::GeneralName<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match n {
        GeneralName::DNSName(d) => Some(d.to_string()),
        GeneralName::URI(u) => Some(u.to_string()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => <[u8; 4]>::try_from(*b)
                .ok()
                .map(|a| std::net::IpAddr::from(a).to_string()),
            16 => <[u8; 16]>::try_from(*b)
                .ok()
                .map(|a| std::net::IpAddr::from(a).to_string()),
            _ => None,
        },
        _ => None,
    }
}
