//! Declarative policy: which provisioner may vouch for which identity, and which names, key
//! types and lifetimes an identity may have. Loaded from TOML files, evaluated on parsed
//! names, denying by default.
//!
//! The file format is documented in `policies/README.md`. In short, every `*.toml` file in the
//! policy directory may hold `[[provisioner]]` and `[[policy]]` tables. For a request, the
//! first `[[policy]]` (files in name order, tables in file order) whose `identities` match the
//! identity and whose `provisioners` (if given) include the token's provisioner is the one
//! that applies; a name is allowed only if that policy allows it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::ca::KeyKind;
use crate::error::{Error, Result};
use crate::names::{format_duration, parse_duration, Identity, San};
use crate::token::VerifyingKey;

/// Name of the provisioner built into the server, behind `POST /v1/admin/tokens`.
pub const ADMIN_PROVISIONER: &str = "admin";

/// Limits that apply when neither policy nor provisioner says otherwise.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub max_token_lifetime: Duration,
    pub trust_domain: Option<String>,
}

/// A provisioner: a named public key with limits.
#[derive(Debug, Clone)]
pub struct Provisioner {
    pub name: String,
    pub key: VerifyingKey,
    pub identities: Vec<IdentityPattern>,
    pub max_token_lifetime: Duration,
    pub max_cert_ttl: Duration,
    /// Where it was defined: a policy file, or "built-in".
    pub source: String,
}

/// A glob over identities: `*` stands for one or more characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern(String);

impl IdentityPattern {
    pub fn parse(s: &str) -> Result<Self> {
        let probe = s.replace('*', "x");
        if s != "*" {
            Identity::parse(&probe).map_err(|_| {
                Error::malformed(
                    "bad-policy",
                    format!("identity pattern {s:?} must be an identity with optional * wildcards"),
                )
            })?;
        }
        Ok(IdentityPattern(s.to_owned()))
    }

    pub fn matches(&self, identity: &Identity) -> bool {
        glob(self.0.as_bytes(), identity.as_str().as_bytes())
    }
}

/// `*` matches one or more bytes; everything else matches itself.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (1..=text.len()).any(|i| glob(rest, &text[i..])),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

/// One name rule after loading; `{identity}` and `{trust_domain}` are substituted at
/// evaluation time.
#[derive(Debug, Clone)]
enum NameRule {
    /// DNS pattern: labels compared one by one; a `*` label matches exactly one label.
    Dns(String),
    /// An IP network.
    Ip(IpAddr, u8),
    /// A URI, exact, or a prefix when it ends in `*`.
    Uri(String),
}

/// A policy, loaded.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub source: String,
    identities: Vec<IdentityPattern>,
    provisioners: Option<Vec<String>>,
    names: Vec<NameRule>,
    pub default_ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    key_types: Option<Vec<String>>,
    pub server_auth: bool,
    pub client_auth: bool,
    allow_wildcards: bool,
}

/// What a policy decided for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub sans: Vec<San>,
    pub ttl: Duration,
    pub server_auth: bool,
    pub client_auth: bool,
    /// "policy NAME in FILE", for logs and explanations.
    pub rule: String,
}

/// A request as the policy sees it.
pub struct Request<'a> {
    pub provisioner: &'a Provisioner,
    pub identity: &'a Identity,
    /// Names the certificate should carry (already checked against the token).
    pub sans: &'a [San],
    pub ttl: Option<Duration>,
    /// The key to be certified; `None` when only names are being checked (token creation).
    pub key: Option<KeyKind>,
}

/// Every provisioner and policy in force.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub provisioners: BTreeMap<String, Provisioner>,
    pub policies: Vec<Policy>,
    pub defaults: Defaults,
    pub files: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    provisioner: Vec<ProvisionerDoc>,
    #[serde(default)]
    policy: Vec<PolicyDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionerDoc {
    name: Spanned<String>,
    public_key: Option<String>,
    public_key_file: Option<String>,
    jwk: Option<serde_json::Value>,
    identities: Vec<Spanned<String>>,
    max_token_lifetime: Option<Spanned<String>>,
    max_cert_ttl: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    name: Option<String>,
    identities: Vec<Spanned<String>>,
    provisioners: Option<Vec<String>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
    #[serde(default)]
    ip: Vec<Spanned<String>>,
    #[serde(default)]
    uri: Vec<Spanned<String>>,
    default_ttl: Option<Spanned<String>>,
    max_ttl: Option<Spanned<String>>,
    key_types: Option<Vec<Spanned<String>>>,
    ekus: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    allow_wildcards: bool,
}

const KEY_TYPES: &[&str] = &["p256", "p384", "ed25519", "rsa"];

/// Error at a place in a policy file, as "FILE:LINE: message".
fn at(file: &Path, text: &str, offset: usize, msg: impl std::fmt::Display) -> Error {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    Error::malformed("bad-policy", format!("{}:{line}: {msg}", file.display()))
}

fn duration_at(file: &Path, text: &str, v: &Option<Spanned<String>>) -> Result<Option<Duration>> {
    v.as_ref()
        .map(|s| parse_duration(s.get_ref()).map_err(|e| at(file, text, s.span().start, e.detail)))
        .transpose()
}

impl PolicySet {
    /// The set in force with no policy files: the built-in admin provisioner only, whose
    /// tokens are honoured as the operator wrote them.
    pub fn builtin(admin_key: VerifyingKey, defaults: Defaults) -> Self {
        let mut set = PolicySet {
            provisioners: BTreeMap::new(),
            policies: Vec::new(),
            defaults,
            files: Vec::new(),
        };
        set.add_admin(admin_key);
        set
    }

    fn add_admin(&mut self, key: VerifyingKey) {
        self.provisioners.insert(
            ADMIN_PROVISIONER.into(),
            Provisioner {
                name: ADMIN_PROVISIONER.into(),
                key,
                identities: vec![IdentityPattern("*".into())],
                max_token_lifetime: self.defaults.max_token_lifetime,
                max_cert_ttl: self.defaults.max_ttl,
                source: "built-in".into(),
            },
        );
    }

    /// Loads every `*.toml` in `dir`. Errors name the file and line.
    pub fn load(dir: &Path, admin_key: VerifyingKey, defaults: Defaults) -> Result<Self> {
        let mut set = Self::builtin(admin_key, defaults);
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Error::malformed(
                "bad-policy",
                format!("reading policy directory {}: {e}", dir.display()),
            )
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Error::malformed("bad-policy", format!("reading {}: {e}", file.display()))
            })?;
            set.load_file(dir, file, &text)?;
        }
        set.files = files;
        Ok(set)
    }

    fn load_file(&mut self, dir: &Path, file: &Path, text: &str) -> Result<()> {
        let doc: FileDoc = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            at(file, text, offset, e.message())
        })?;
        let src = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for p in doc.provisioner {
            let name = p.name.get_ref().clone();
            let here = |off: usize, msg: String| at(file, text, off, msg);
            if name == ADMIN_PROVISIONER || self.provisioners.contains_key(&name) {
                return Err(here(
                    p.name.span().start,
                    format!("provisioner {name:?} is defined twice or is reserved"),
                ));
            }
            let key = match (&p.public_key, &p.public_key_file, &p.jwk) {
                (Some(pem), None, None) => VerifyingKey::from_spki_pem(pem),
                (None, Some(path), None) => {
                    let path = dir.join(path);
                    std::fs::read_to_string(&path)
                        .map_err(|e| {
                            Error::malformed(
                                "bad-policy",
                                format!("reading {}: {e}", path.display()),
                            )
                        })
                        .and_then(|pem| VerifyingKey::from_spki_pem(&pem))
                }
                (None, None, Some(jwk)) => VerifyingKey::from_jwk(jwk),
                _ => Err(Error::malformed(
                    "bad-policy",
                    "give exactly one of public_key, public_key_file or jwk",
                )),
            }
            .map_err(|e| {
                here(
                    p.name.span().start,
                    format!("provisioner {name:?}: {}", e.detail),
                )
            })?;
            let identities = p
                .identities
                .iter()
                .map(|s| {
                    IdentityPattern::parse(s.get_ref()).map_err(|e| here(s.span().start, e.detail))
                })
                .collect::<Result<Vec<_>>>()?;
            let lifetime = duration_at(file, text, &p.max_token_lifetime)?
                .unwrap_or(self.defaults.max_token_lifetime)
                .min(self.defaults.max_token_lifetime);
            let max_cert_ttl = duration_at(file, text, &p.max_cert_ttl)?
                .unwrap_or(self.defaults.max_ttl)
                .min(self.defaults.max_ttl);
            self.provisioners.insert(
                name.clone(),
                Provisioner {
                    name,
                    key,
                    identities,
                    max_token_lifetime: lifetime,
                    max_cert_ttl,
                    source: src.clone(),
                },
            );
        }
        for (i, p) in doc.policy.into_iter().enumerate() {
            let policy = self.load_policy(file, text, &src, i, p)?;
            self.policies.push(policy);
        }
        Ok(())
    }

    fn load_policy(
        &self,
        file: &Path,
        text: &str,
        src: &str,
        i: usize,
        p: PolicyDoc,
    ) -> Result<Policy> {
        let here = |off: usize, msg: String| at(file, text, off, msg);
        let identities = p
            .identities
            .iter()
            .map(|s| {
                IdentityPattern::parse(s.get_ref()).map_err(|e| here(s.span().start, e.detail))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut names = Vec::new();
        for d in &p.dns {
            let probe = d
                .get_ref()
                .replace("{identity}", "x")
                .replace("{trust_domain}", "x");
            let probe = probe.replace("*.", "x.");
            San::parse(&probe).map_err(|e| here(d.span().start, e.detail))?;
            names.push(NameRule::Dns(d.get_ref().to_ascii_lowercase()));
        }
        for n in &p.ip {
            let s = n.get_ref();
            let (addr, len) = s.split_once('/').unwrap_or((s, ""));
            let addr: IpAddr = addr.parse().map_err(|_| {
                here(
                    n.span().start,
                    format!("{s:?} is not an IP address or CIDR network"),
                )
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = if len.is_empty() {
                max
            } else {
                len.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| here(n.span().start, format!("{s:?} has a bad prefix length")))?
            };
            names.push(NameRule::Ip(addr, len));
        }
        for u in &p.uri {
            if !u.get_ref().contains("://") {
                return Err(here(
                    u.span().start,
                    format!("{:?} is not a URI pattern", u.get_ref()),
                ));
            }
            names.push(NameRule::Uri(u.get_ref().clone()));
        }
        let key_types = match &p.key_types {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|k| {
                        let k_str = k.get_ref().to_ascii_lowercase();
                        if KEY_TYPES.contains(&k_str.as_str()) {
                            Ok(k_str)
                        } else {
                            Err(here(
                                k.span().start,
                                format!("key type {:?} is not one of {KEY_TYPES:?}", k.get_ref()),
                            ))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let (mut server_auth, mut client_auth) = (true, true);
        if let Some(ekus) = &p.ekus {
            server_auth = false;
            client_auth = false;
            for e in ekus {
                match e.get_ref().as_str() {
                    "server" => server_auth = true,
                    "client" => client_auth = true,
                    other => {
                        return Err(here(
                            e.span().start,
                            format!("EKU {other:?} must be \"server\" or \"client\""),
                        ))
                    }
                }
            }
            if !server_auth && !client_auth {
                return Err(Error::malformed(
                    "bad-policy",
                    format!("{}: a policy must allow at least one EKU", file.display()),
                ));
            }
        }
        let default_ttl = duration_at(file, text, &p.default_ttl)?;
        let max_ttl = duration_at(file, text, &p.max_ttl)?;
        if let (Some(d), Some(m)) = (default_ttl, max_ttl) {
            if d > m {
                return Err(Error::malformed(
                    "bad-policy",
                    format!("{}: default_ttl is longer than max_ttl", file.display()),
                ));
            }
        }
        Ok(Policy {
            name: p.name.unwrap_or_else(|| format!("#{}", i + 1)),
            source: src.to_owned(),
            identities,
            provisioners: p.provisioners,
            names,
            default_ttl,
            max_ttl,
            key_types,
            server_auth,
            client_auth,
            allow_wildcards: p.allow_wildcards,
        })
    }

    pub fn provisioner(&self, name: &str) -> Option<&Provisioner> {
        self.provisioners.get(name)
    }

    /// Decides a request. Deny by default: a name passes only if the policy that applies
    /// allows it; with no policy files at all, the built-in rule admits what an admin-made
    /// token names and nothing else.
    pub fn evaluate(&self, req: &Request<'_>) -> Result<Decision> {
        let p = req.provisioner;
        if !p.identities.iter().any(|pat| pat.matches(req.identity)) {
            return Err(Error::forbidden(
                "identity-not-allowed",
                format!(
                    "provisioner {:?} ({}) may not authorize identity {:?}",
                    p.name,
                    p.source,
                    req.identity.as_str()
                ),
            ));
        }
        if self.policies.is_empty() {
            return self.builtin_decision(req);
        }
        let Some(policy) = self.policies.iter().find(|pol| pol.applies(req)) else {
            return Err(Error::forbidden(
                "no-policy",
                format!(
                    "no policy allows identity {:?} with provisioner {:?}; add a [[policy]] for it",
                    req.identity.as_str(),
                    p.name
                ),
            ));
        };
        let rule = format!("policy {:?} in {}", policy.name, policy.source);
        if let (Some(kinds), Some(key)) = (&policy.key_types, req.key) {
            let k = key.name();
            let family = if k.starts_with("rsa") {
                "rsa".to_string()
            } else {
                k.clone()
            };
            if !kinds.contains(&family) {
                return Err(Error::forbidden(
                    "key-type-not-allowed",
                    format!(
                        "key type {k} is not allowed for identity {:?} by {rule}; allowed: {}",
                        req.identity.as_str(),
                        kinds.join(", ")
                    ),
                ));
            }
        }
        for san in req.sans {
            if san.is_wildcard() && !policy.allow_wildcards {
                return Err(Error::forbidden(
                    "wildcard-not-allowed",
                    format!("wildcard name {san} is refused: {rule} does not set allow_wildcards"),
                ));
            }
            if !policy.allows(san, req.identity, self.defaults.trust_domain.as_deref()) {
                return Err(Error::forbidden(
                    "name-not-allowed",
                    format!(
                        "name {san} is not allowed for identity {:?} by {rule}",
                        req.identity.as_str()
                    ),
                ));
            }
        }
        let max = policy
            .max_ttl
            .unwrap_or(self.defaults.max_ttl)
            .min(p.max_cert_ttl);
        let ttl = self.ttl(req, policy.default_ttl, max, &rule)?;
        Ok(Decision {
            sans: req.sans.to_vec(),
            ttl,
            server_auth: policy.server_auth,
            client_auth: policy.client_auth,
            rule,
        })
    }

    fn builtin_decision(&self, req: &Request<'_>) -> Result<Decision> {
        let rule = "the built-in rule (no policy files: admin tokens only)".to_string();
        if req.provisioner.name != ADMIN_PROVISIONER {
            return Err(Error::forbidden(
                "no-policy",
                format!(
                    "no policy allows provisioner {:?}; with no policy files only admin-made tokens are honoured",
                    req.provisioner.name
                ),
            ));
        }
        if let Some(w) = req.sans.iter().find(|s| s.is_wildcard()) {
            return Err(Error::forbidden(
                "wildcard-not-allowed",
                format!("wildcard name {w} is refused by {rule}; wildcards need a policy with allow_wildcards"),
            ));
        }
        let max = self.defaults.max_ttl.min(req.provisioner.max_cert_ttl);
        let ttl = self.ttl(req, None, max, &rule)?;
        Ok(Decision {
            sans: req.sans.to_vec(),
            ttl,
            server_auth: true,
            client_auth: true,
            rule,
        })
    }

    fn ttl(
        &self,
        req: &Request<'_>,
        default: Option<Duration>,
        max: Duration,
        rule: &str,
    ) -> Result<Duration> {
        match req.ttl {
            Some(t) if t > max => Err(Error::forbidden(
                "ttl-too-long",
                format!(
                    "requested lifetime {} is longer than the {} that {rule} allows for identity {:?}",
                    format_duration(t), format_duration(max), req.identity.as_str()
                ),
            )),
            Some(t) => Ok(t),
            None => Ok(default.unwrap_or(self.defaults.default_ttl).min(max)),
        }
    }
}

impl Policy {
    fn applies(&self, req: &Request<'_>) -> bool {
        self.identities.iter().any(|p| p.matches(req.identity))
            && self
                .provisioners
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| p == &req.provisioner.name))
    }

    fn allows(&self, san: &San, identity: &Identity, trust_domain: Option<&str>) -> bool {
        let subst = |s: &str| {
            let s = s.replace("{identity}", identity.as_str());
            match trust_domain {
                Some(td) => s.replace("{trust_domain}", td),
                None => s,
            }
        };
        self.names.iter().any(|rule| match (rule, san) {
            (NameRule::Dns(pat), San::Dns(name)) => dns_matches(&subst(pat), name),
            (NameRule::Ip(net, len), San::Ip(ip)) => ip_in(ip, net, *len),
            (NameRule::Uri(pat), San::Uri(uri)) => {
                let pat = subst(pat);
                match pat.strip_suffix('*') {
                    Some(prefix) => uri.starts_with(prefix) && uri.len() > prefix.len(),
                    None => &pat == uri,
                }
            }
            _ => false,
        })
    }
}

/// Compares label by label; a `*` label in the pattern matches exactly one label of the name,
/// and a wildcard name matches only a pattern with `*` in the same place.
fn dns_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| *p == "*" || p == n)
}

fn ip_in(ip: &IpAddr, net: &IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(*a) & mask == u32::from(*b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(*a) & mask == u128::from(*b) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{Algorithm, SigningKey};

    fn defaults() -> Defaults {
        Defaults {
            default_ttl: Duration::from_secs(86_400),
            max_ttl: Duration::from_secs(86_400),
            max_token_lifetime: Duration::from_secs(3600),
            trust_domain: Some("example.org".into()),
        }
    }

    fn key() -> VerifyingKey {
        SigningKey::generate(Algorithm::ES256)
            .unwrap()
            .0
            .verifying_key()
    }

    fn set_with(text: &str) -> Result<PolicySet> {
        let dir = tempfile::tempdir().unwrap();
        let ci = SigningKey::generate(Algorithm::EdDSA).unwrap().0;
        std::fs::write(dir.path().join("ci.pub"), ci.public_key_pem()).unwrap();
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        PolicySet::load(dir.path(), key(), defaults())
    }

    const CI: &str = r#"
[[provisioner]]
name = "ci"
public_key_file = "ci.pub"
identities = ["ci-*"]
max_cert_ttl = "2h"

[[policy]]
name = "ci builds"
identities = ["ci-*"]
dns = ["{identity}.ci.internal"]
uri = ["spiffe://{trust_domain}/{identity}"]
ip = ["10.1.0.0/16"]
default_ttl = "1h"
key_types = ["p256", "ed25519"]
"#;

    fn decide(
        set: &PolicySet,
        prov: &str,
        id: &str,
        sans: &[&str],
        ttl: Option<u64>,
    ) -> Result<Decision> {
        let sans: Vec<San> = sans.iter().map(|s| San::parse(s).unwrap()).collect();
        let identity = Identity::parse(id).unwrap();
        set.evaluate(&Request {
            provisioner: set.provisioner(prov).unwrap(),
            identity: &identity,
            sans: &sans,
            ttl: ttl.map(Duration::from_secs),
            key: Some(KeyKind::EcdsaP256),
        })
    }

    #[test]
    fn ci_provisioner_limits() {
        let set = set_with(CI).unwrap();
        let d = decide(
            &set,
            "ci",
            "ci-build-42",
            &[
                "ci-build-42.ci.internal",
                "10.1.2.3",
                "spiffe://example.org/ci-build-42",
            ],
            None,
        )
        .unwrap();
        assert_eq!(d.ttl, Duration::from_secs(3600));
        assert!(d.rule.contains("ci builds"));
        let e = decide(&set, "ci", "payments", &[], None).unwrap_err();
        assert_eq!(e.code, "identity-not-allowed");
        let e = decide(&set, "ci", "ci-x", &["ci-y.ci.internal"], None).unwrap_err();
        assert!(
            e.detail.contains("ci-y.ci.internal") && e.detail.contains("p.toml"),
            "{}",
            e.detail
        );
        let e = decide(&set, "ci", "ci-x", &["10.2.0.1"], None).unwrap_err();
        assert_eq!(e.code, "name-not-allowed");
        let e = decide(&set, "ci", "ci-x", &[], Some(3 * 3600)).unwrap_err();
        assert_eq!(e.code, "ttl-too-long");
        // With policy files present, admin tokens need a policy too.
        assert_eq!(
            decide(&set, "admin", "payments", &[], None)
                .unwrap_err()
                .code,
            "no-policy"
        );
    }

    #[test]
    fn builtin_rule() {
        let set = PolicySet::builtin(key(), defaults());
        assert!(decide(&set, "admin", "payments", &["payments.internal"], None).is_ok());
        assert_eq!(
            decide(&set, "admin", "p", &["*.internal"], None)
                .unwrap_err()
                .code,
            "wildcard-not-allowed"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = set_with("[[policy]]\nidentities = [\"ok\"]\ndns = [\"bad name\"]\n").unwrap_err();
        assert!(e.detail.contains("p.toml:3"), "{}", e.detail);
        let e = set_with("[[policy]]\nidentities = [\"ok\"]\nmax_ttl = \"forever\"\n").unwrap_err();
        assert!(e.detail.contains("p.toml:3"), "{}", e.detail);
        let e = set_with("[[policy]]\nidentities = [\"ok\"]\nbogus = 1\n").unwrap_err();
        assert!(e.detail.contains("p.toml:3"), "{}", e.detail);
    }

    #[test]
    fn matching() {
        assert!(glob(b"ci-*", b"ci-build-42"));
        assert!(!glob(b"ci-*", b"ci-"));
        assert!(dns_matches("*.svc.internal", "a.svc.internal"));
        assert!(!dns_matches("*.svc.internal", "a.b.svc.internal"));
        assert!(ip_in(
            &"10.1.2.3".parse().unwrap(),
            &"10.1.0.0".parse().unwrap(),
            16
        ));
        assert!(!ip_in(
            &"10.2.2.3".parse().unwrap(),
            &"10.1.0.0".parse().unwrap(),
            16
        ));
    }
}
