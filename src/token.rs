//! Bootstrap tokens: compact JWS (JWT) signed by a provisioner key.
//!
//! Only two algorithms exist here, ES256 and EdDSA (Ed25519), and each verifying key is pinned
//! to the one algorithm its key type implies. The header's `alg` must name that algorithm;
//! `none`, HMAC and RSA are refused before any key is touched, so no algorithm confusion is
//! possible. Verification uses ring directly: it is several times faster than a generic JWT
//! library's pure-Rust backend and keeps the accepted surface this small.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

use crate::error::{Error, Result};

/// Longest token accepted, in bytes; a real one is well under 1 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Clock skew tolerated on `nbf`, `iat` and `exp`.
pub const LEEWAY_SECS: i64 = 60;
/// Shortest `jti` accepted: 22 base64url characters carry 128 bits.
const MIN_JTI_LEN: usize = 22;
const MAX_JTI_LEN: usize = 128;

/// A token signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    ES256,
    EdDSA,
}

impl Algorithm {
    pub fn as_str(&self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }
}

/// A provisioner's public key, pinned to its algorithm.
#[derive(Debug, Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    raw: Vec<u8>,
}

impl VerifyingKey {
    /// Reads a SubjectPublicKeyInfo in PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_spki_pem(pem: &str) -> Result<Self> {
        let der = crate::pem::decode_all(pem, "PUBLIC KEY")?.remove(0);
        Self::from_spki_der(&der)
    }

    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        let bad = |why: String| Error::malformed("bad-provisioner-key", why);
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| bad(format!("parsing public key: {e}")))?;
        let oid = spki.algorithm.algorithm.to_id_string();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let alg = match (oid.as_str(), curve.map(|c| c.to_id_string()).as_deref()) {
            ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => Algorithm::ES256,
            ("1.3.101.112", _) => Algorithm::EdDSA,
            _ => {
                return Err(bad(format!(
                    "provisioner keys must be ECDSA P-256 (ES256) or Ed25519 (EdDSA), not {oid}"
                )))
            }
        };
        Ok(VerifyingKey {
            alg,
            raw: spki.subject_public_key.data.to_vec(),
        })
    }

    /// Reads a public JWK: `{"kty":"EC","crv":"P-256","x","y"}` or
    /// `{"kty":"OKP","crv":"Ed25519","x"}`.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self> {
        let bad = |why: &str| Error::malformed("bad-provisioner-key", format!("JWK {why}"));
        let field = |name: &str| -> Result<Vec<u8>> {
            let s = jwk
                .get(name)
                .and_then(|v| v.as_str())
                .ok_or_else(|| bad("lacks a field"))?;
            B64.decode(s)
                .map_err(|_| bad("holds a field that is not base64url"))
        };
        let kty = jwk.get("kty").and_then(|v| v.as_str());
        let crv = jwk.get("crv").and_then(|v| v.as_str());
        match (kty, crv) {
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("has P-256 coordinates of the wrong length"));
                }
                let mut raw = vec![0x04];
                raw.extend(x);
                raw.extend(y);
                Ok(VerifyingKey {
                    alg: Algorithm::ES256,
                    raw,
                })
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = field("x")?;
                if x.len() != 32 {
                    return Err(bad("has an Ed25519 key of the wrong length"));
                }
                Ok(VerifyingKey {
                    alg: Algorithm::EdDSA,
                    raw: x,
                })
            }
            _ => Err(bad("must be an EC P-256 or OKP Ed25519 public key")),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        let alg: &dyn signature::VerificationAlgorithm = match self.alg {
            Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
            Algorithm::EdDSA => &signature::ED25519,
        };
        UnparsedPublicKey::new(alg, &self.raw)
            .verify(message, sig)
            .is_ok()
    }
}

/// DER of a PKCS#8 v1 Ed25519 private key up to its 32-byte seed (RFC 8410, section 7).
const ED25519_PKCS8_V1_PREFIX: &[u8] = &[
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A provisioner's private key, used to mint tokens.
pub enum SigningKey {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl SigningKey {
    /// Generates a new key and returns it with its PKCS#8 PEM, which the caller stores.
    pub fn generate(alg: Algorithm) -> Result<(Self, String)> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Algorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| Error::internal("generating an ES256 key"))?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::EdDSA => {
                // ring writes Ed25519 keys as PKCS#8 v2 (RFC 5958, with the public key), which
                // OpenSSL 3.0 cannot read; the v1 form (RFC 8410) is read everywhere.
                let mut seed = [0u8; 32];
                rng.fill(&mut seed)
                    .map_err(|_| Error::internal("generating an Ed25519 key"))?;
                [ED25519_PKCS8_V1_PREFIX, &seed].concat()
            }
        };
        let pem = crate::pem::encode("PRIVATE KEY", &pkcs8);
        Ok((Self::from_pkcs8_pem(&pem)?, pem))
    }

    /// Reads a PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`), P-256 or Ed25519.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self> {
        let der = crate::pem::decode_all(pem, "PRIVATE KEY")?.remove(0);
        let rng = SystemRandom::new();
        if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
        {
            return Ok(SigningKey::Es256(k));
        }
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            return Ok(SigningKey::EdDsa(k));
        }
        Err(Error::malformed(
            "bad-provisioner-key",
            "the provisioner private key must be PKCS#8 PEM of a P-256 or Ed25519 key",
        ))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Es256(_) => Algorithm::ES256,
            SigningKey::EdDsa(_) => Algorithm::EdDSA,
        }
    }

    /// The public half as SubjectPublicKeyInfo PEM.
    pub fn public_key_pem(&self) -> String {
        // DER prefixes of the SubjectPublicKeyInfo for each key type (RFC 5480, RFC 8410);
        // the raw public key follows them directly.
        const P256_PREFIX: &[u8] = &[
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        const ED25519_PREFIX: &[u8] = &[
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let (prefix, raw) = match self {
            SigningKey::Es256(k) => (P256_PREFIX, k.public_key().as_ref()),
            SigningKey::EdDsa(k) => (ED25519_PREFIX, k.public_key().as_ref()),
        };
        crate::pem::encode("PUBLIC KEY", &[prefix, raw].concat())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        let raw = match self {
            SigningKey::Es256(k) => k.public_key().as_ref().to_vec(),
            SigningKey::EdDsa(k) => k.public_key().as_ref().to_vec(),
        };
        VerifyingKey {
            alg: self.algorithm(),
            raw,
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        match self {
            SigningKey::Es256(k) => k
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| Error::internal("signing token")),
            SigningKey::EdDsa(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }
}

/// The claims of a bootstrap token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Provisioner name.
    pub iss: String,
    /// Service identity.
    pub sub: String,
    /// Names the holder may request.
    #[serde(default)]
    pub sans: Vec<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    /// Extensions the verifier must understand (RFC 7515, 4.1.11); sigil understands none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
}

/// A fresh `jti`: 128 random bits, base64url.
pub fn new_jti() -> Result<String> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::internal("the random generator failed"))?;
    Ok(B64.encode(b))
}

/// Signs `claims` into a compact JWS.
pub fn mint(key: &SigningKey, claims: &Claims) -> Result<String> {
    let header = Header {
        alg: key.algorithm().as_str().into(),
        typ: Some("JWT".into()),
        kid: None,
        crit: None,
    };
    let h = B64.encode(serde_json::to_vec(&header).map_err(|e| Error::internal(e.to_string()))?);
    let c = B64.encode(serde_json::to_vec(claims).map_err(|e| Error::internal(e.to_string()))?);
    let signing_input = format!("{h}.{c}");
    let sig = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", B64.encode(sig)))
}

/// A token split and decoded, but not yet verified. Nothing in it may be trusted except to
/// choose which provisioner key to verify it with.
pub struct Unverified<'a> {
    alg: String,
    pub claims: Claims,
    signing_input: &'a str,
    signature: Vec<u8>,
}

fn bad_token(detail: impl Into<String>) -> Error {
    Error::unauthenticated("bad-token", detail)
}

/// Splits and decodes a token, checking only its shape.
pub fn parse(token: &str) -> Result<Unverified<'_>> {
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::unauthenticated(
            "missing-token",
            "no token given; pass a bootstrap token",
        ));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad_token(format!(
            "token is longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_token(
            "token is not a compact JWT (three base64url parts joined by dots)",
        ));
    };
    let decode = |part: &str, what: &str| {
        B64.decode(part)
            .map_err(|_| bad_token(format!("token {what} is not base64url")))
    };
    let header: Header = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|e| bad_token(format!("token header is not valid JSON: {e}")))?;
    if header.alg != "ES256" && header.alg != "EdDSA" {
        return Err(bad_token(format!(
            "token algorithm {:?} is not accepted; tokens must be signed with ES256 or EdDSA",
            header.alg
        )));
    }
    if header.crit.is_some() {
        return Err(bad_token(
            "token header has crit extensions, which this CA does not implement",
        ));
    }
    let claims: Claims = serde_json::from_slice(&decode(c, "claims")?)
        .map_err(|e| bad_token(format!("token claims are incomplete or malformed: {e}")))?;
    let signature = decode(s, "signature")?;
    Ok(Unverified {
        alg: header.alg,
        claims,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature,
    })
}

/// What the verifier checks besides the signature.
pub struct Expectations<'a> {
    pub audience: &'a str,
    /// Seconds since the epoch.
    pub now: i64,
    /// Longest lifetime honoured, counted from `iat`, whatever `exp` says.
    pub max_lifetime_secs: i64,
}

impl Unverified<'_> {
    /// Verifies the signature with `key` (whose algorithm is pinned) and the claims against
    /// `expect`. Returns the claims only if everything holds.
    pub fn verify(self, key: &VerifyingKey, expect: &Expectations<'_>) -> Result<Claims> {
        if self.alg != key.algorithm().as_str() {
            return Err(bad_token(format!(
                "token is signed with {} but provisioner {:?} uses {}",
                self.alg,
                self.claims.iss,
                key.algorithm().as_str()
            )));
        }
        if !key.verify(self.signing_input.as_bytes(), &self.signature) {
            return Err(bad_token(format!(
                "token signature does not verify with the key of provisioner {:?}",
                self.claims.iss
            )));
        }
        let c = self.claims;
        if !c.aud.iter().any(|a| a == expect.audience) {
            return Err(bad_token(format!(
                "token audience {:?} does not include this CA ({:?})",
                c.aud, expect.audience
            )));
        }
        let expires = c.exp.min(c.iat.saturating_add(expect.max_lifetime_secs));
        if expect.now >= expires.saturating_add(LEEWAY_SECS) {
            return Err(Error::unauthenticated(
                "token-expired",
                "token has expired; get a new one",
            ));
        }
        if c.nbf > expect.now + LEEWAY_SECS || c.iat > expect.now + LEEWAY_SECS {
            return Err(bad_token(
                "token is not valid yet (nbf or iat lies in the future)",
            ));
        }
        if c.jti.len() < MIN_JTI_LEN || c.jti.len() > MAX_JTI_LEN {
            return Err(bad_token(format!(
                "token jti must be {MIN_JTI_LEN} to {MAX_JTI_LEN} characters \
                 (128 random bits or more)"
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: "ci".into(),
            sub: "payments".into(),
            sans: vec!["payments.internal".into()],
            aud: vec!["sigil".into()],
            iat: now,
            nbf: now,
            exp: now + 600,
            jti: new_jti().unwrap(),
        }
    }

    fn expect(now: i64) -> Expectations<'static> {
        Expectations {
            audience: "sigil",
            now,
            max_lifetime_secs: 3600,
        }
    }

    #[test]
    fn round_trip_both_algorithms() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let (key, pem) = SigningKey::generate(alg).unwrap();
            let reloaded = SigningKey::from_pkcs8_pem(&pem).unwrap();
            let vk = VerifyingKey::from_spki_pem(&reloaded.public_key_pem()).unwrap();
            let t = mint(&key, &claims(1000)).unwrap();
            let c = parse(&t).unwrap().verify(&vk, &expect(1000)).unwrap();
            assert_eq!(c.sub, "payments");
        }
    }

    #[test]
    fn refuses_other_key_and_tampering() {
        let (key, _) = SigningKey::generate(Algorithm::ES256).unwrap();
        let (other, _) = SigningKey::generate(Algorithm::ES256).unwrap();
        let t = mint(&key, &claims(1000)).unwrap();
        assert!(parse(&t)
            .unwrap()
            .verify(&other.verifying_key(), &expect(1000))
            .is_err());
        let mut c = claims(1000);
        c.sub = "admin".into();
        let forged_claims = B64.encode(serde_json::to_vec(&c).unwrap());
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert!(parse(&forged)
            .unwrap()
            .verify(&key.verifying_key(), &expect(1000))
            .is_err());
    }

    #[test]
    fn refuses_alg_confusion() {
        let (key, _) = SigningKey::generate(Algorithm::ES256).unwrap();
        let c = B64.encode(serde_json::to_vec(&claims(1000)).unwrap());
        for alg in ["none", "HS256", "RS256"] {
            let h = B64.encode(format!(r#"{{"alg":"{alg}"}}"#));
            let err = parse(&format!("{h}.{c}.")).err().unwrap();
            assert!(err.detail.contains("not accepted"), "{alg}: {}", err.detail);
        }
        let crit = B64.encode(br#"{"alg":"ES256","crit":["exp"]}"#);
        let err = parse(&format!("{crit}.{c}.")).err().unwrap();
        assert!(err.detail.contains("crit"), "{}", err.detail);
        // EdDSA header against an ES256-pinned key.
        let (ed, _) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let t = mint(&ed, &claims(1000)).unwrap();
        assert!(parse(&t)
            .unwrap()
            .verify(&key.verifying_key(), &expect(1000))
            .is_err());
    }

    #[test]
    fn lifetime_audience_and_jti() {
        let (key, _) = SigningKey::generate(Algorithm::ES256).unwrap();
        let vk = key.verifying_key();
        let t = mint(&key, &claims(1000)).unwrap();
        let late = parse(&t)
            .unwrap()
            .verify(&vk, &expect(1000 + 600 + LEEWAY_SECS))
            .err()
            .unwrap();
        assert_eq!(late.code, "token-expired");
        // A long exp is capped by the server's maximum lifetime.
        let mut long = claims(1000);
        long.exp = 1000 + 86_400;
        let t = mint(&key, &long).unwrap();
        assert!(parse(&t)
            .unwrap()
            .verify(&vk, &expect(1000 + 3600 + LEEWAY_SECS))
            .is_err());
        let mut aud = claims(1000);
        aud.aud = vec!["elsewhere".into()];
        let t = mint(&key, &aud).unwrap();
        assert!(parse(&t).unwrap().verify(&vk, &expect(1000)).is_err());
        let mut short = claims(1000);
        short.jti = "abc".into();
        let t = mint(&key, &short).unwrap();
        assert!(parse(&t).unwrap().verify(&vk, &expect(1000)).is_err());
        let mut future = claims(5000);
        future.exp = 9000;
        let t = mint(&key, &future).unwrap();
        assert!(parse(&t).unwrap().verify(&vk, &expect(1000)).is_err());
    }

    #[test]
    fn jwk_keys() {
        let (key, _) = SigningKey::generate(Algorithm::EdDSA).unwrap();
        let SigningKey::EdDsa(k) = &key else {
            unreachable!()
        };
        let x = B64.encode(k.public_key().as_ref());
        let jwk = serde_json::json!({"kty":"OKP","crv":"Ed25519","x": x});
        let vk = VerifyingKey::from_jwk(&jwk).unwrap();
        let t = mint(&key, &claims(1000)).unwrap();
        assert!(parse(&t).unwrap().verify(&vk, &expect(1000)).is_ok());
    }
}
