//! The signer: the only module that touches CA private keys.
//!
//! It creates the root and intermediate on first start, loads them afterwards, and signs
//! exactly what it is handed: leaf templates that the authority has already decided on, and
//! CRLs. It decides nothing about who may have which name.

pub mod keyfile;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use rcgen::PublicKeyData;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CrlDistributionPoint,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::error::{Error, Result};
use crate::names::{Identity, San, Serial};

/// Root validity. Ten years is the usual span for an offline-style private root.
const ROOT_VALIDITY: Duration = Duration::days(3650);
/// Intermediate validity: half the root's, so a rotation can happen well inside it.
const INTERMEDIATE_VALIDITY: Duration = Duration::days(1825);
/// The CA's own TLS certificate; re-issued at start when a third of this is left.
const SERVER_VALIDITY: Duration = Duration::days(90);
/// Leaves are backdated this much so that peers with slightly slow clocks accept them.
pub const BACKDATE: Duration = Duration::seconds(60);
/// Serial length in bytes: never more than 20 octets once DER-encoded (RFC 5280, 4.1.2.2).
const SERIAL_LEN: usize = 20;
/// The first four bytes of a serial count seconds from this time (2024-01-01T00:00:00Z).
const SERIAL_EPOCH: i64 = 1_704_067_200;

/// File names inside the data directory.
pub struct CaFiles {
    pub dir: PathBuf,
}

impl CaFiles {
    pub fn new(dir: &Path) -> Self {
        CaFiles {
            dir: dir.to_path_buf(),
        }
    }
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("root.crt")
    }
    pub fn root_key(&self) -> PathBuf {
        self.dir.join("root.key")
    }
    pub fn intermediate_cert(&self) -> PathBuf {
        self.dir.join("intermediate.crt")
    }
    pub fn intermediate_key(&self) -> PathBuf {
        self.dir.join("intermediate.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
    pub fn provisioner_key(&self) -> PathBuf {
        self.dir.join("provisioner.key")
    }
    pub fn is_initialized(&self) -> bool {
        self.root_cert().exists() && self.intermediate_cert().exists()
    }
}

/// The public key types a CSR may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa(usize),
}

impl KeyKind {
    /// Short name as policies and the command line spell it.
    pub fn name(&self) -> String {
        match self {
            KeyKind::EcdsaP256 => "p256".into(),
            KeyKind::EcdsaP384 => "p384".into(),
            KeyKind::Ed25519 => "ed25519".into(),
            KeyKind::Rsa(bits) => format!("rsa{bits}"),
        }
    }

    /// Classifies a SubjectPublicKeyInfo, refusing key types and sizes this CA does not sign.
    pub fn of_spki(spki_der: &[u8]) -> Result<Self> {
        let weak = |why: String| Error::forbidden("weak-key", why);
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| Error::malformed("bad-key", format!("parsing public key: {e}")))?;
        let parsed = spki
            .parsed()
            .map_err(|e| Error::malformed("bad-key", format!("parsing public key: {e}")))?;
        match parsed {
            PublicKey::EC(_) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string());
                match curve.as_deref() {
                    Some("1.2.840.10045.3.1.7") => Ok(KeyKind::EcdsaP256),
                    Some("1.3.132.0.34") => Ok(KeyKind::EcdsaP384),
                    other => Err(weak(format!(
                        "elliptic curve {} is not accepted; use P-256, P-384 or Ed25519",
                        other.unwrap_or("(none)")
                    ))),
                }
            }
            PublicKey::RSA(rsa) => {
                let bits = rsa.key_size();
                if (2048..=4096).contains(&bits) {
                    Ok(KeyKind::Rsa(bits))
                } else {
                    Err(weak(format!(
                        "RSA key of {bits} bits is not accepted; use 2048 to 4096 bits, or P-256"
                    )))
                }
            }
            PublicKey::Unknown(_) if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
                Ok(KeyKind::Ed25519)
            }
            _ => Err(weak(format!(
                "public key algorithm {} is not accepted; use P-256, P-384, Ed25519 or RSA",
                spki.algorithm.algorithm.to_id_string()
            ))),
        }
    }
}

/// Key identifier by RFC 7093 method 1: SHA-256 of the subjectPublicKey bits, cut to 160 bits.
pub fn key_id(spki_der: &[u8]) -> Result<Vec<u8>> {
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| Error::malformed("bad-key", format!("parsing public key: {e}")))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &spki.subject_public_key.data);
    Ok(digest.as_ref()[..20].to_vec())
}

/// SHA-256 of a whole DER object, lowercase hex: the fingerprint format used everywhere.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// A fresh serial: four bytes holding the bits `01` and 30 bits of seconds since
/// [`SERIAL_EPOCH`], then sixteen random bytes. That is 128 random bits, above the 127 this CA
/// promises and the 64 the CA/Browser Forum asks; the value is positive and its first byte,
/// 0x40 to 0x7f, is never zero, so its hex text always has 40 digits.
///
/// The time prefix makes serials grow, as numbers and as hex text: the database's index of
/// serials then takes each new one at its end, in a page a commit already writes, instead of
/// in a random page of its own. Serials of one second sort among themselves at random. The 30
/// bits of seconds wrap in 2058; serials stay unique and random after that, only no longer in
/// order.
pub fn new_serial() -> Result<Vec<u8>> {
    serial_at(OffsetDateTime::now_utc())
}

fn serial_at(now: OffsetDateTime) -> Result<Vec<u8>> {
    let mut bytes = [0u8; SERIAL_LEN];
    SystemRandom::new()
        .fill(&mut bytes[4..])
        .map_err(|_| Error::internal("the system random generator failed"))?;
    let secs = now.unix_timestamp() - SERIAL_EPOCH;
    let prefix = (secs as u32) & 0x3fff_ffff | 0x4000_0000;
    bytes[..4].copy_from_slice(&prefix.to_be_bytes());
    Ok(bytes.to_vec())
}

/// One CA certificate with its signing key.
pub struct CaCert {
    pub der: Vec<u8>,
    pub pem: String,
    pub key_id: Vec<u8>,
    pub not_after: OffsetDateTime,
    pub issuer: Issuer<'static, KeyPair>,
}

impl CaCert {
    fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let pem = fs::read_to_string(cert_path)
            .with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = keyfile::read_secret(key_path)?;
        let key = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("parsing {} (PKCS#8 PEM expected)", key_path.display()))?;
        let der = pem_to_der(&pem, "CERTIFICATE")
            .with_context(|| format!("parsing {}", cert_path.display()))?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| anyhow!("parsing {}: {e}", cert_path.display()))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            anyhow::bail!(
                "{} does not hold the key of {}",
                key_path.display(),
                cert_path.display()
            );
        }
        let key_id = key_id(cert.public_key().raw).map_err(|e| anyhow!(e.detail))?;
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&der.clone().into(), key)
            .with_context(|| format!("loading {} as an issuer", cert_path.display()))?;
        Ok(CaCert {
            der,
            pem,
            key_id,
            not_after,
            issuer,
        })
    }
}

/// Decodes the first PEM block with the given label.
pub fn pem_to_der(pem: &str, label: &str) -> anyhow::Result<Vec<u8>> {
    crate::pem::decode_all(pem, label)
        .map_err(|e| anyhow!(e.detail))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no {label} PEM block found"))
}

/// What the authority hands the signer for one leaf certificate.
pub struct LeafTemplate {
    pub identity: Identity,
    pub sans: Vec<San>,
    pub spki_der: Vec<u8>,
    pub key_kind: KeyKind,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub crl_url: String,
    pub server_auth: bool,
    pub client_auth: bool,
}

/// A signed leaf.
pub struct SignedLeaf {
    pub serial: Serial,
    pub der: Vec<u8>,
    pub pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Which CA signs a CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrlScope {
    /// The intermediate's CRL, listing revoked leaves.
    Intermediate,
    /// The root's CRL, listing revoked intermediates.
    Root,
}

impl CrlScope {
    pub fn as_str(&self) -> &'static str {
        match self {
            CrlScope::Intermediate => "intermediate",
            CrlScope::Root => "root",
        }
    }
}

/// One entry of a CRL, held in the form the signer encodes. Signing moves the entries into
/// the CRL's parameters in place, so a CRL of a million entries is not held twice.
#[derive(Debug, Clone)]
pub struct CrlEntry(RevokedCertParams);

impl CrlEntry {
    pub fn new(
        serial: &Serial,
        revoked_at: OffsetDateTime,
        reason: Option<RevocationReason>,
    ) -> Self {
        CrlEntry(RevokedCertParams {
            serial_number: SerialNumber::from(serial.to_be_bytes()),
            revocation_time: revoked_at,
            // RFC 5280, 5.3.1: the reason code extension should be absent rather than say
            // unspecified.
            reason_code: reason.filter(|r| *r != RevocationReason::Unspecified),
            invalidity_date: None,
        })
    }
}

/// The loaded CA: root and intermediate, with their keys.
pub struct Ca {
    pub root: CaCert,
    pub intermediate: CaCert,
    /// PEM of every root peers should trust.
    pub bundle_pem: String,
}

/// Options for creating a new CA.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Organization name written into both CA subjects.
    pub organization: String,
}

impl Ca {
    /// Whether the intermediate's key signs in tens of microseconds (P-256, Ed25519), as the
    /// keys `sigil init` makes do. An imported RSA or P-384 key takes up to milliseconds.
    pub fn signs_quickly(&self) -> bool {
        let alg = self.intermediate.issuer.key().algorithm();
        alg == &rcgen::PKCS_ECDSA_P256_SHA256 || alg == &rcgen::PKCS_ED25519
    }

    /// Creates root and intermediate in `files.dir`. Fails if any of their files exist.
    pub fn create(files: &CaFiles, opts: &InitOptions) -> anyhow::Result<()> {
        fs::create_dir_all(&files.dir)
            .with_context(|| format!("creating {}", files.dir.display()))?;
        let now = OffsetDateTime::now_utc();

        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut root = ca_params(&opts.organization, "Root CA", &root_key, now, ROOT_VALIDITY)?;
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root_cert = root.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root, root_key);

        let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut int = ca_params(
            &opts.organization,
            "Intermediate CA",
            &int_key,
            now,
            INTERMEDIATE_VALIDITY,
        )?;
        int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int.use_authority_key_identifier_extension = true;
        let int_cert = int.signed_by(&int_key, &root_issuer)?;

        // Keys first: a certificate file without its key would make the directory look
        // initialized when it cannot sign.
        keyfile::write_new_secret(
            &files.root_key(),
            root_issuer.key().serialize_pem().as_bytes(),
        )?;
        keyfile::write_new_secret(
            &files.intermediate_key(),
            int_key.serialize_pem().as_bytes(),
        )?;
        keyfile::write_atomic(&files.intermediate_cert(), int_cert.pem().as_bytes(), 0o644)?;
        keyfile::write_atomic(&files.root_cert(), root_cert.pem().as_bytes(), 0o644)?;
        Ok(())
    }

    /// Loads root and intermediate from `files.dir`.
    pub fn load(files: &CaFiles) -> anyhow::Result<Self> {
        let root = CaCert::load(&files.root_cert(), &files.root_key())?;
        let intermediate = CaCert::load(&files.intermediate_cert(), &files.intermediate_key())?;
        let bundle_pem = root.pem.clone();
        Ok(Ca {
            root,
            intermediate,
            bundle_pem,
        })
    }

    /// SHA-256 fingerprint of the root certificate, lowercase hex.
    pub fn root_fingerprint(&self) -> String {
        sha256_hex(&self.root.der)
    }

    /// Signs a leaf certificate as the intermediate. The template is trusted: the authority
    /// has already checked names, lifetime and key.
    pub fn sign_leaf(&self, t: &LeafTemplate) -> Result<SignedLeaf> {
        let serial_bytes = new_serial()?;
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
        p.not_before = t.not_before;
        p.not_after = t.not_after.min(self.intermediate.not_after);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, t.identity.as_str());
        p.distinguished_name = dn;
        p.subject_alt_names = t.sans.iter().map(san_type).collect::<Result<_>>()?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if matches!(t.key_kind, KeyKind::Rsa(_)) {
            p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        p.extended_key_usages = Vec::new();
        if t.server_auth {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if t.client_auth {
            p.extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(&t.spki_der)?);
        p.crl_distribution_points = vec![CrlDistributionPoint {
            uris: vec![t.crl_url.clone()],
        }];

        let public_key = SubjectPublicKeyInfo::from_der(&t.spki_der)
            .map_err(|e| Error::malformed("bad-key", format!("reading public key: {e}")))?;
        let cert = p
            .signed_by(&public_key, &self.intermediate.issuer)
            .map_err(|e| Error::internal(format!("signing certificate: {e}")))?;
        Ok(SignedLeaf {
            serial: Serial::from_be_bytes(&serial_bytes),
            der: cert.der().to_vec(),
            pem: cert.pem(),
            not_before: p.not_before,
            not_after: p.not_after,
        })
    }

    /// Issues the CA's own TLS server certificate, signed by the intermediate.
    pub fn issue_server_cert(
        &self,
        dns: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<(String, String)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::internal(format!("generating server key: {e}")))?;
        let now = OffsetDateTime::now_utc();
        let mut p = CertificateParams::default();
        p.serial_number = Some(SerialNumber::from_slice(&new_serial()?));
        p.not_before = now - BACKDATE;
        p.not_after = (now + SERVER_VALIDITY).min(self.intermediate.not_after);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "sigil");
        p.distinguished_name = dn;
        let mut sans = vec![San::Dns("localhost".into())];
        sans.extend(dns.iter().map(|d| San::Dns(d.clone())));
        sans.push(San::Ip(
            "127.0.0.1"
                .parse()
                .map_err(|_| Error::internal("loopback address"))?,
        ));
        sans.extend(ips.iter().map(|ip| San::Ip(*ip)));
        p.subject_alt_names = sans.iter().map(san_type).collect::<Result<_>>()?;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p.key_identifier_method =
            KeyIdMethod::PreSpecified(key_id(&key.subject_public_key_info())?);
        let cert = p
            .signed_by(&key, &self.intermediate.issuer)
            .map_err(|e| Error::internal(format!("signing server certificate: {e}")))?;
        let chain = format!("{}{}", cert.pem(), self.intermediate.pem);
        Ok((chain, key.serialize_pem()))
    }

    /// Signs a full CRL for `scope`, consuming its entries.
    pub fn sign_crl(
        &self,
        scope: CrlScope,
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
        entries: Vec<CrlEntry>,
    ) -> Result<Vec<u8>> {
        let signer = match scope {
            CrlScope::Intermediate => &self.intermediate,
            CrlScope::Root => &self.root,
        };
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            // A newtype unwrapped element by element: the vector is reused in place.
            revoked_certs: entries.into_iter().map(|e| e.0).collect(),
            key_identifier_method: KeyIdMethod::PreSpecified(signer.key_id.clone()),
        };
        let crl = params
            .signed_by(&signer.issuer)
            .map_err(|e| Error::internal(format!("signing {} CRL: {e}", scope.as_str())))?;
        Ok(crl.der().to_vec())
    }
}

fn ca_params(
    org: &str,
    cn: &str,
    key: &KeyPair,
    now: OffsetDateTime,
    validity: Duration,
) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.serial_number = Some(SerialNumber::from_slice(
        &new_serial().map_err(|e| anyhow!(e))?,
    ));
    p.not_before = now - BACKDATE;
    p.not_after = now + validity;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, format!("{org} {cn}"));
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method =
        KeyIdMethod::PreSpecified(key_id(&key.subject_public_key_info()).map_err(|e| anyhow!(e))?);
    Ok(p)
}

/// A parsed name as rcgen writes it into a certificate or CSR.
pub fn san_type(san: &San) -> Result<SanType> {
    let ia5 = |s: &str| {
        s.to_string()
            .try_into()
            .map_err(|_| Error::malformed("bad-name", format!("name {s:?} is not IA5 text")))
    };
    Ok(match san {
        San::Dns(d) => SanType::DnsName(ia5(d)?),
        San::Ip(ip) => SanType::IpAddress(*ip),
        San::Uri(u) => SanType::URI(ia5(u)?),
    })
}

/// Existing CA files to adopt instead of creating new ones.
#[derive(Debug, Clone)]
pub struct ImportFiles {
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
    pub intermediate_cert: PathBuf,
    pub intermediate_key: PathBuf,
}

impl Ca {
    /// Adopts an existing root and intermediate (PEM certificates, PKCS#8 PEM keys) after
    /// checking that they are what this CA needs: keys match certificates, both are CA
    /// certificates allowed to sign certificates and CRLs, the intermediate is signed by the
    /// root, and both are valid now.
    pub fn import(files: &CaFiles, src: &ImportFiles) -> anyhow::Result<()> {
        fs::create_dir_all(&files.dir)
            .with_context(|| format!("creating {}", files.dir.display()))?;
        let read =
            |p: &Path| fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        let (root_pem, int_pem) = (read(&src.root_cert)?, read(&src.intermediate_cert)?);
        let (root_key, int_key) = (read(&src.root_key)?, read(&src.intermediate_key)?);
        let root_der = pem_to_der(&root_pem, "CERTIFICATE")?;
        let int_der = pem_to_der(&int_pem, "CERTIFICATE")?;
        let (_, root) =
            X509Certificate::from_der(&root_der).map_err(|e| anyhow!("parsing root: {e}"))?;
        let (_, int) = X509Certificate::from_der(&int_der)
            .map_err(|e| anyhow!("parsing intermediate: {e}"))?;
        for (name, cert, key_pem) in [("root", &root, &root_key), ("intermediate", &int, &int_key)]
        {
            let key = KeyPair::from_pem(key_pem).with_context(|| {
                format!("{name} key must be PKCS#8 PEM (openssl pkcs8 -topk8 -nocrypt)")
            })?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                anyhow::bail!("the {name} key does not belong to the {name} certificate");
            }
            let ca = cert
                .basic_constraints()
                .ok()
                .flatten()
                .is_some_and(|b| b.value.ca);
            let ku = cert
                .key_usage()
                .ok()
                .flatten()
                .map(|k| (k.value.key_cert_sign(), k.value.crl_sign()));
            if !ca || ku != Some((true, true)) {
                anyhow::bail!(
                    "the {name} certificate must be a CA with keyCertSign and cRLSign key usage"
                );
            }
            if !cert.validity().is_valid() {
                anyhow::bail!("the {name} certificate is not valid now");
            }
        }
        int.verify_signature(Some(root.public_key()))
            .map_err(|_| anyhow!("the intermediate is not signed by the root"))?;
        keyfile::write_new_secret(&files.root_key(), root_key.as_bytes())?;
        keyfile::write_new_secret(&files.intermediate_key(), int_key.as_bytes())?;
        keyfile::write_atomic(
            &files.intermediate_cert(),
            encode_cert(&int_der).as_bytes(),
            0o644,
        )?;
        keyfile::write_atomic(&files.root_cert(), encode_cert(&root_der).as_bytes(), 0o644)?;
        Ok(())
    }
}

fn encode_cert(der: &[u8]) -> String {
    crate::pem::encode("CERTIFICATE", der)
}

/// Maps an RFC 5280 reason name to rcgen's code.
pub fn reason_code(name: &str) -> Option<RevocationReason> {
    Some(match name {
        "unspecified" => RevocationReason::Unspecified,
        "keyCompromise" => RevocationReason::KeyCompromise,
        "cACompromise" => RevocationReason::CaCompromise,
        "affiliationChanged" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessationOfOperation" => RevocationReason::CessationOfOperation,
        "certificateHold" => RevocationReason::CertificateHold,
        "privilegeWithdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_start_with_the_time_and_end_random() {
        let before = OffsetDateTime::now_utc().unix_timestamp() - SERIAL_EPOCH;
        let (a, b) = (new_serial().unwrap(), new_serial().unwrap());
        let after = OffsetDateTime::now_utc().unix_timestamp() - SERIAL_EPOCH;
        for s in [&a, &b] {
            assert_eq!(s.len(), SERIAL_LEN);
            assert!(
                (0x40..0x80).contains(&s[0]),
                "serial must be positive: {s:02x?}"
            );
            let secs = i64::from(u32::from_be_bytes(s[..4].try_into().unwrap()) & 0x3fff_ffff);
            assert!(
                (before..=after).contains(&secs),
                "{secs} not in {before}..={after}"
            );
        }
        assert_ne!(a[4..], b[4..], "the random part repeated");
        // A serial of a later second sorts after, also as the hex text the database stores,
        // and across the years when a shorter prefix would have gained a digit.
        let text = |at: OffsetDateTime| {
            crate::names::Serial::from_be_bytes(&serial_at(at).unwrap()).to_string()
        };
        let now = OffsetDateTime::now_utc();
        for (earlier, later) in [
            (now, now + Duration::seconds(1)),
            (now, now + Duration::days(6 * 365)),
        ] {
            let (earlier, later) = (text(earlier), text(later));
            assert_eq!(earlier.len(), 40);
            assert!(earlier < later, "{earlier} sorts after {later}");
        }
    }
}
