//! Declarative policy: which provisioner may vouch for which identity, and which names, key
//! types and lifetimes an identity may have. Loaded from TOML files, evaluated on parsed
//! names, denying by default.
//!
//! The file format is documented in `policies/README.md`. In short, every `*.toml` file in the
//! policy directory may hold `[[provisioner]]` and `[[policy]]` tables. For a request, the
//! first `[[policy]]` (files in name order, tables in file order) whose `identities` match the
//! identity and whose `provisioners` (if given) include the token's provisioner is the one
//! that applies; a name is allowed only if that policy allows it. With no `[[policy]]` at all,
//! a built-in rule honours what admin-made tokens name and nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::ca::KeyKind;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::names::{format_duration, parse_duration, Identity, San};
use crate::token::VerifyingKey;

/// Name of the provisioner built into the server, behind `POST /v1/admin/tokens`.
pub const ADMIN_PROVISIONER: &str = "admin";

/// Key type families a policy may list in `key_types`.
pub const KEY_TYPES: &[&str] = &["p256", "p384", "ed25519", "rsa"];

/// Longest provisioner name; it travels in every token's `iss`.
const MAX_PROVISIONER_NAME_LEN: usize = 64;

/// Limits that apply when neither policy nor provisioner says otherwise: the server's own
/// settings.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub max_token_lifetime: Duration,
    pub trust_domain: Option<String>,
}

impl Defaults {
    pub fn from_settings(settings: &Settings) -> Self {
        Defaults {
            default_ttl: settings.default_ttl,
            max_ttl: settings.max_ttl,
            max_token_lifetime: settings.max_token_lifetime,
            trust_domain: settings.trust_domain.clone(),
        }
    }
}

/// A provisioner: a named public key with limits.
#[derive(Debug, Clone)]
pub struct Provisioner {
    pub name: String,
    pub key: VerifyingKey,
    /// Identities this provisioner may vouch for; a token for any other is refused.
    pub identities: Vec<IdentityPattern>,
    /// Longest token lifetime honoured, already capped by the server's setting.
    pub max_token_lifetime: Duration,
    /// Longest certificate lifetime as the file sets it; the server's `max_ttl` still caps it.
    pub max_cert_ttl: Option<Duration>,
    /// Where it was defined: `FILE:LINE`, or `built-in`.
    pub source: String,
}

impl Provisioner {
    /// True when one of the provisioner's identity patterns matches.
    pub fn may_authorize(&self, identity: &Identity) -> bool {
        self.identities.iter().any(|pat| pat.matches(identity))
    }
}

/// A glob over identities: `*` stands for one or more characters, dots included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern(String);

impl IdentityPattern {
    /// Parses a pattern: an identity in which any run of characters may be replaced by `*`.
    pub fn parse(s: &str) -> Result<Self> {
        let probe = s.replace('*', "x");
        if s != "*" && Identity::parse(&probe).is_err() {
            return Err(Error::malformed(
                "bad-policy",
                format!(
                    "identity pattern {s:?} must be an identity (lowercase letters, digits, \
                     inner hyphens, dots) with optional * wildcards, like \"ci-*\""
                ),
            ));
        }
        Ok(IdentityPattern(s.to_owned()))
    }

    pub fn matches(&self, identity: &Identity) -> bool {
        glob(self.0.as_bytes(), identity.as_str().as_bytes())
    }

    /// True for the pattern that matches every identity.
    pub fn is_any(&self) -> bool {
        self.0 == "*"
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*` matches one or more bytes; everything else matches itself. Runs in time proportional
/// to pattern length times text length (both short), whatever the number of stars.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // reach[j]: the pattern read so far matches exactly text[..j].
    let mut reach = vec![false; text.len() + 1];
    reach[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        if p == b'*' {
            let mut earlier = false;
            for j in 1..=text.len() {
                earlier |= reach[j - 1];
                next[j] = earlier;
            }
        } else {
            for j in 1..=text.len() {
                next[j] = reach[j - 1] && text[j - 1] == p;
            }
        }
        reach = next;
    }
    reach[text.len()]
}

/// One name rule after loading, kept in the form the file wrote it; `{identity}` and
/// `{trust_domain}` are substituted at evaluation time.
#[derive(Debug, Clone)]
pub enum NameRule {
    /// DNS pattern, lowercase: labels compared one by one; a `*` label matches exactly one
    /// label.
    Dns(String),
    /// An IP network, with the text it was written as.
    Ip(IpAddr, u8, String),
    /// A URI, exact, or a prefix ending in `/` when the pattern ends in `/*`.
    Uri(String),
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameRule::Dns(p) => write!(f, "dns {p}"),
            NameRule::Ip(_, _, text) => write!(f, "ip {text}"),
            NameRule::Uri(p) => write!(f, "uri {p}"),
        }
    }
}

/// Which names a policy allows.
#[derive(Debug, Clone)]
pub enum Names {
    /// Only names matching one of these rules.
    Listed(Vec<NameRule>),
    /// Whatever names the token lists (`allow_token_names = true`): the provisioner's holder
    /// chose them, as with the built-in rule for admin tokens.
    FromToken,
}

/// A policy, loaded.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    /// Where it was defined: `FILE:LINE`.
    pub source: String,
    pub identities: Vec<IdentityPattern>,
    /// Provisioners whose tokens this policy applies to; `None` means any.
    pub provisioners: Option<Vec<String>>,
    pub names: Names,
    pub default_ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    /// Allowed key type families; `None` means every type the CA accepts.
    pub key_types: Option<Vec<String>>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub allow_wildcards: bool,
}

impl Policy {
    /// "policy NAME in FILE:LINE", as refusals and explanations name it.
    pub fn rule(&self) -> String {
        format!("policy {:?} in {}", self.name, self.source)
    }

    fn matches_identity(&self, identity: &Identity) -> bool {
        self.identities.iter().any(|p| p.matches(identity))
    }

    fn admits_provisioner(&self, provisioner: &str) -> bool {
        self.provisioners
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == provisioner))
    }

    fn allows(&self, san: &San, identity: &Identity, trust_domain: Option<&str>) -> bool {
        let rules = match &self.names {
            Names::FromToken => return true,
            Names::Listed(rules) => rules,
        };
        rules.iter().any(|rule| match (rule, san) {
            (NameRule::Dns(pat), San::Dns(name)) => {
                dns_matches(&substitute(pat, identity, trust_domain), name)
            }
            (NameRule::Ip(net, len, _), San::Ip(ip)) => ip_in(ip, net, *len),
            (NameRule::Uri(pat), San::Uri(uri)) => {
                let pat = substitute(pat, identity, trust_domain);
                match pat.strip_suffix('*') {
                    Some(prefix) => uri.starts_with(prefix) && uri.len() > prefix.len(),
                    None => &pat == uri,
                }
            }
            _ => false,
        })
    }

    /// True when every request this policy could match is already taken by `earlier`.
    fn shadowed_by(&self, earlier: &Policy) -> bool {
        let identities = earlier.identities.iter().any(IdentityPattern::is_any)
            || self
                .identities
                .iter()
                .all(|p| earlier.identities.contains(p));
        let provisioners = match (&earlier.provisioners, &self.provisioners) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(theirs), Some(ours)) => ours.iter().all(|p| theirs.contains(p)),
        };
        identities && provisioners
    }
}

/// What a policy decided for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub sans: Vec<San>,
    pub ttl: Duration,
    /// Why the lifetime is what it is: requested, or which default applied.
    pub ttl_reason: String,
    /// The longest lifetime that could have been asked for, and which limit set it.
    pub max_ttl: Duration,
    pub max_ttl_reason: String,
    pub server_auth: bool,
    pub client_auth: bool,
    /// Key type families allowed; `None` means every type the CA accepts.
    pub key_types: Option<Vec<String>>,
    /// "policy NAME in FILE:LINE", or the built-in rule, for logs and explanations.
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
    /// In the order they are tried: files by name, tables in file order.
    pub policies: Vec<Policy>,
    pub defaults: Defaults,
    /// The files loaded, in name order.
    pub files: Vec<PathBuf>,
    /// Settings that load but do not do what they seem to, as "FILE:LINE: message".
    pub warnings: Vec<String>,
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
    name: Spanned<String>,
    identities: Spanned<Vec<Spanned<String>>>,
    provisioners: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    dns: Vec<Spanned<String>>,
    #[serde(default)]
    ip: Vec<Spanned<String>>,
    #[serde(default)]
    uri: Vec<Spanned<String>>,
    allow_token_names: Option<Spanned<bool>>,
    default_ttl: Option<Spanned<String>>,
    max_ttl: Option<Spanned<String>>,
    key_types: Option<Vec<Spanned<String>>>,
    ekus: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    allow_wildcards: bool,
}

/// One policy file being loaded: where errors point.
struct Place<'a> {
    path: &'a Path,
    text: &'a str,
    /// The file name alone, as refusals show it (never the server's directory layout).
    name: String,
}

impl Place<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    /// "NAME:LINE", for sources shown in refusals and summaries.
    fn source(&self, offset: usize) -> String {
        format!("{}:{}", self.name, self.line(offset))
    }

    /// An error at a place in the file, as "PATH:LINE: message".
    fn error(&self, offset: usize, msg: impl fmt::Display) -> Error {
        Error::malformed(
            "bad-policy",
            format!("{}:{}: {msg}", self.path.display(), self.line(offset)),
        )
    }

    fn warning(&self, offset: usize, msg: impl fmt::Display) -> String {
        format!("{}:{}: {msg}", self.path.display(), self.line(offset))
    }

    fn duration(&self, v: &Option<Spanned<String>>) -> Result<Option<Duration>> {
        v.as_ref()
            .map(|s| parse_duration(s.get_ref()).map_err(|e| self.error(s.span().start, e.detail)))
            .transpose()
    }

    fn identity_patterns(&self, list: &[Spanned<String>]) -> Result<Vec<IdentityPattern>> {
        list.iter()
            .map(|s| {
                IdentityPattern::parse(s.get_ref())
                    .map_err(|e| self.error(s.span().start, e.detail))
            })
            .collect()
    }
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
            warnings: Vec::new(),
        };
        set.provisioners.insert(
            ADMIN_PROVISIONER.into(),
            Provisioner {
                name: ADMIN_PROVISIONER.into(),
                key: admin_key,
                identities: vec![IdentityPattern("*".into())],
                max_token_lifetime: set.defaults.max_token_lifetime,
                max_cert_ttl: None,
                source: "built-in".into(),
            },
        );
        set
    }

    /// The set the server runs with: the policy directory of `settings` if one is
    /// configured, else the built-in rule.
    pub fn from_settings(settings: &Settings, admin_key: VerifyingKey) -> Result<Self> {
        let defaults = Defaults::from_settings(settings);
        match &settings.policies {
            Some(dir) => Self::load(dir, admin_key, defaults),
            None => Ok(Self::builtin(admin_key, defaults)),
        }
    }

    /// Loads every `*.toml` in `dir` (not hidden files, not subdirectories), in name order.
    /// Errors name the file and line; a set with any error is refused whole.
    pub fn load(dir: &Path, admin_key: VerifyingKey, defaults: Defaults) -> Result<Self> {
        let mut set = Self::builtin(admin_key, defaults);
        let files = policy_files(dir)?;
        let mut references = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Error::malformed("bad-policy", format!("reading {}: {e}", file.display()))
            })?;
            let place = Place {
                path: file,
                text: &text,
                name: file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            set.load_file(dir, &place, &mut references)?;
        }
        // Provisioners may be defined in any file, so names are checked once all are read.
        for (name, error) in references {
            if !set.provisioners.contains_key(&name) {
                let known: Vec<&str> = set.provisioners.keys().map(String::as_str).collect();
                return Err(Error::malformed(
                    "bad-policy",
                    format!(
                        "{error}: provisioner {name:?} is not defined (known: {})",
                        known.join(", ")
                    ),
                ));
            }
        }
        set.warn_about_shadowed_policies();
        set.files = files;
        Ok(set)
    }

    /// `references` collects (provisioner name, "PATH:LINE") for every name a policy lists.
    fn load_file(
        &mut self,
        dir: &Path,
        place: &Place<'_>,
        references: &mut Vec<(String, String)>,
    ) -> Result<()> {
        let doc: FileDoc = toml::from_str(place.text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            place.error(offset, e.message())
        })?;
        for p in doc.provisioner {
            let provisioner = self.load_provisioner(dir, place, p)?;
            self.provisioners
                .insert(provisioner.name.clone(), provisioner);
        }
        for p in doc.policy {
            for name in p.provisioners.iter().flatten() {
                let at = format!("{}:{}", place.path.display(), place.line(name.span().start));
                references.push((name.get_ref().clone(), at));
            }
            let policy = self.load_policy(place, p)?;
            self.policies.push(policy);
        }
        Ok(())
    }

    fn load_provisioner(
        &mut self,
        dir: &Path,
        place: &Place<'_>,
        p: ProvisionerDoc,
    ) -> Result<Provisioner> {
        let name = p.name.get_ref().clone();
        let at = p.name.span().start;
        check_provisioner_name(&name).map_err(|e| place.error(at, e))?;
        if name == ADMIN_PROVISIONER {
            return Err(place.error(
                at,
                format!("provisioner name {name:?} is reserved for the built-in admin provisioner"),
            ));
        }
        if let Some(first) = self.provisioners.get(&name) {
            return Err(place.error(
                at,
                format!(
                    "provisioner {name:?} is already defined in {}",
                    first.source
                ),
            ));
        }
        let key = provisioner_key(dir, &p)
            .map_err(|e| place.error(at, format!("provisioner {name:?}: {}", e.detail)))?;
        let identities = place.identity_patterns(&p.identities)?;
        if identities.is_empty() {
            return Err(place.error(
                at,
                format!("provisioner {name:?} lists no identities; it could authorize nothing"),
            ));
        }
        let server_lifetime = self.defaults.max_token_lifetime;
        let lifetime = place.duration(&p.max_token_lifetime)?;
        let max_cert_ttl = place.duration(&p.max_cert_ttl)?;
        self.warn_if_capped(
            place,
            &p.max_token_lifetime,
            server_lifetime,
            &format!("provisioner {name:?}: max_token_lifetime"),
            "max_token_lifetime",
        );
        self.warn_if_capped(
            place,
            &p.max_cert_ttl,
            self.defaults.max_ttl,
            &format!("provisioner {name:?}: max_cert_ttl"),
            "max_ttl",
        );
        Ok(Provisioner {
            name,
            key,
            identities,
            max_token_lifetime: lifetime.unwrap_or(server_lifetime).min(server_lifetime),
            max_cert_ttl,
            source: place.source(at),
        })
    }

    /// Records a warning when a duration setting exceeds the server's `server_setting`,
    /// which caps it.
    fn warn_if_capped(
        &mut self,
        place: &Place<'_>,
        setting: &Option<Spanned<String>>,
        limit: Duration,
        what: &str,
        server_setting: &str,
    ) {
        let Some(s) = setting else { return };
        if let Ok(value) = parse_duration(s.get_ref()) {
            if value > limit {
                self.warnings.push(place.warning(
                    s.span().start,
                    format!(
                        "{what} {} is capped at the server's {server_setting} of {}",
                        format_duration(value),
                        format_duration(limit)
                    ),
                ));
            }
        }
    }

    fn load_policy(&mut self, place: &Place<'_>, p: PolicyDoc) -> Result<Policy> {
        let name = p.name.get_ref().trim().to_owned();
        let at = p.name.span().start;
        if name.is_empty() {
            return Err(place.error(at, "a policy needs a non-empty name"));
        }
        if let Some(first) = self.policies.iter().find(|q| q.name == name) {
            return Err(place.error(
                at,
                format!("policy {name:?} is already defined in {}", first.source),
            ));
        }
        let identities = place.identity_patterns(p.identities.get_ref())?;
        if identities.is_empty() {
            return Err(place.error(
                p.identities.span().start,
                format!("policy {name:?} lists no identities; it would never apply"),
            ));
        }
        let names = self.name_rules(place, &p)?;
        let key_types = key_types(place, &name, at, p.key_types.as_deref())?;
        let (server_auth, client_auth) = ekus(place, p.ekus.as_ref())?;
        let (default_ttl, max_ttl) = self.policy_lifetimes(place, &name, &p)?;
        Ok(Policy {
            name,
            source: place.source(at),
            identities,
            provisioners: p
                .provisioners
                .map(|v| v.into_iter().map(Spanned::into_inner).collect()),
            names,
            default_ttl,
            max_ttl,
            key_types,
            server_auth,
            client_auth,
            allow_wildcards: p.allow_wildcards,
        })
    }

    fn name_rules(&self, place: &Place<'_>, p: &PolicyDoc) -> Result<Names> {
        let td = self.defaults.trust_domain.as_deref();
        let mut rules = Vec::new();
        for d in &p.dns {
            let pat = dns_rule(d.get_ref(), td).map_err(|e| place.error(d.span().start, e))?;
            rules.push(NameRule::Dns(pat));
        }
        for n in &p.ip {
            let (net, len) = ip_rule(n.get_ref()).map_err(|e| place.error(n.span().start, e))?;
            rules.push(NameRule::Ip(net, len, n.get_ref().clone()));
        }
        for u in &p.uri {
            uri_rule(u.get_ref(), td).map_err(|e| place.error(u.span().start, e))?;
            rules.push(NameRule::Uri(u.get_ref().clone()));
        }
        let Some(flag) = p.allow_token_names.as_ref().filter(|f| *f.get_ref()) else {
            return Ok(Names::Listed(rules));
        };
        if !rules.is_empty() {
            return Err(place.error(
                flag.span().start,
                "allow_token_names = true cannot be combined with dns, ip or uri rules; choose one",
            ));
        }
        if p.provisioners.is_none() {
            return Err(place.error(
                flag.span().start,
                "allow_token_names = true needs an explicit provisioners list, so that it cannot \
                 reach tokens of every provisioner by accident",
            ));
        }
        Ok(Names::FromToken)
    }

    /// The policy's default_ttl and max_ttl; a max_ttl above the server's is kept (the
    /// server's caps it at evaluation) and reported.
    fn policy_lifetimes(
        &mut self,
        place: &Place<'_>,
        name: &str,
        p: &PolicyDoc,
    ) -> Result<(Option<Duration>, Option<Duration>)> {
        let default_ttl = place.duration(&p.default_ttl)?;
        let max_ttl = place.duration(&p.max_ttl)?;
        if let (Some(d), Some(m), Some(s)) = (default_ttl, max_ttl, &p.default_ttl) {
            if d > m {
                return Err(place.error(
                    s.span().start,
                    format!(
                        "default_ttl {} is longer than max_ttl {}",
                        format_duration(d),
                        format_duration(m)
                    ),
                ));
            }
        }
        self.warn_if_capped(
            place,
            &p.max_ttl,
            self.defaults.max_ttl,
            &format!("policy {name:?}: max_ttl"),
            "max_ttl",
        );
        Ok((default_ttl, max_ttl))
    }

    fn warn_about_shadowed_policies(&mut self) {
        for (i, later) in self.policies.iter().enumerate() {
            if let Some(earlier) = self.policies[..i].iter().find(|e| later.shadowed_by(e)) {
                self.warnings.push(format!(
                    "{}: policy {:?} is never used: {} comes first and takes every request it \
                     would match",
                    later.source,
                    later.name,
                    earlier.rule()
                ));
            }
        }
    }

    pub fn provisioner(&self, name: &str) -> Option<&Provisioner> {
        self.provisioners.get(name)
    }

    /// The policy that applies to a request, if any: the first whose identities and
    /// provisioners both match.
    pub fn policy_for(&self, provisioner: &str, identity: &Identity) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|pol| pol.matches_identity(identity) && pol.admits_provisioner(provisioner))
    }

    /// Decides a request. Deny by default: a name passes only if the policy that applies
    /// allows it; with no `[[policy]]` at all, the built-in rule admits what an admin-made
    /// token names and nothing else.
    ///
    /// # Errors
    ///
    /// `Forbidden`, with a detail naming the provisioner or rule that refused and what to
    /// change.
    pub fn evaluate(&self, req: &Request<'_>) -> Result<Decision> {
        let p = req.provisioner;
        if !p.may_authorize(req.identity) {
            return Err(Error::forbidden(
                "identity-not-allowed",
                format!(
                    "provisioner {:?} in {} may authorize only identities matching {}, not {:?}",
                    p.name,
                    p.source,
                    join(&p.identities),
                    req.identity.as_str()
                ),
            ));
        }
        if self.policies.is_empty() {
            return self.builtin_decision(req);
        }
        let Some(policy) = self.policy_for(&p.name, req.identity) else {
            return Err(self.no_policy(req));
        };
        let rule = policy.rule();
        if let (Some(kinds), Some(key)) = (&policy.key_types, req.key) {
            let name = key.name();
            let family = if matches!(key, KeyKind::Rsa(_)) {
                "rsa".to_owned()
            } else {
                name.clone()
            };
            if !kinds.contains(&family) {
                return Err(Error::forbidden(
                    "key-type-not-allowed",
                    format!(
                        "key type {name} is not allowed for identity {:?} by {rule}; allowed: {}",
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
        self.decide_lifetime(req, Some(policy), rule)
            .map(|d| Decision {
                server_auth: policy.server_auth,
                client_auth: policy.client_auth,
                key_types: policy.key_types.clone(),
                ..d
            })
    }

    /// The refusal when no policy applies, naming the policies that nearly did.
    fn no_policy(&self, req: &Request<'_>) -> Error {
        let mut detail = format!(
            "no policy applies to identity {:?} with provisioner {:?}",
            req.identity.as_str(),
            req.provisioner.name
        );
        for near in self
            .policies
            .iter()
            .filter(|pol| pol.matches_identity(req.identity))
        {
            let listed = near.provisioners.as_deref().unwrap_or_default().join(", ");
            detail.push_str(&format!(
                "; {} matches the identity but only for provisioners {listed}",
                near.rule()
            ));
        }
        detail.push_str("; an operator must add a [[policy]] for it");
        Error::forbidden("no-policy", detail)
    }

    fn builtin_decision(&self, req: &Request<'_>) -> Result<Decision> {
        let rule = "the built-in rule (no [[policy]] in force: admin tokens only)".to_owned();
        if req.provisioner.name != ADMIN_PROVISIONER {
            return Err(Error::forbidden(
                "no-policy",
                format!(
                    "no policy applies to provisioner {:?}: with no [[policy]] in force only \
                     admin-made tokens are honoured; an operator must add a [[policy]] for it",
                    req.provisioner.name
                ),
            ));
        }
        if let Some(w) = req.sans.iter().find(|s| s.is_wildcard()) {
            return Err(Error::forbidden(
                "wildcard-not-allowed",
                format!(
                    "wildcard name {w} is refused by {rule}; wildcards need a policy with \
                     allow_wildcards"
                ),
            ));
        }
        self.decide_lifetime(req, None, rule)
    }

    /// The lifetime: requested (refused above the maximum), or the default capped at the
    /// maximum. The maximum is the smallest of the policy's max_ttl, the provisioner's
    /// max_cert_ttl and the server's max_ttl.
    fn decide_lifetime(
        &self,
        req: &Request<'_>,
        policy: Option<&Policy>,
        rule: String,
    ) -> Result<Decision> {
        let prov = req.provisioner;
        let mut max = (self.defaults.max_ttl, "the server's max_ttl".to_owned());
        let candidates = [
            policy.and_then(|pol| pol.max_ttl.map(|m| (m, format!("max_ttl of {rule}")))),
            prov.max_cert_ttl.map(|m| {
                (
                    m,
                    format!(
                        "max_cert_ttl of provisioner {:?} in {}",
                        prov.name, prov.source
                    ),
                )
            }),
        ];
        // The most specific limit is named when several are equal.
        for (limit, why) in candidates.into_iter().flatten() {
            if limit <= max.0 {
                max = (limit, why);
            }
        }
        let (ttl, ttl_reason) = match req.ttl {
            Some(t) if t > max.0 => {
                return Err(Error::forbidden(
                    "ttl-too-long",
                    format!(
                        "requested lifetime {} for identity {:?} is longer than {}, the {}; ask \
                         for {} or less, or leave the lifetime out to get the default",
                        format_duration(t),
                        req.identity.as_str(),
                        format_duration(max.0),
                        max.1,
                        format_duration(max.0)
                    ),
                ))
            }
            Some(t) => (t, "as requested".to_owned()),
            None => {
                let (d, why) = match policy.and_then(|pol| pol.default_ttl) {
                    Some(d) => (d, format!("the default_ttl of {rule}")),
                    None => (
                        self.defaults.default_ttl,
                        "the server's default_ttl".to_owned(),
                    ),
                };
                if d > max.0 {
                    (max.0, format!("{why}, capped at the {}", max.1))
                } else {
                    (d, why)
                }
            }
        };
        Ok(Decision {
            sans: req.sans.to_vec(),
            ttl,
            ttl_reason,
            max_ttl: max.0,
            max_ttl_reason: max.1,
            server_auth: true,
            client_auth: true,
            key_types: None,
            rule,
        })
    }
}

/// The public key of a provisioner, from exactly one of its three key fields.
fn provisioner_key(dir: &Path, p: &ProvisionerDoc) -> Result<VerifyingKey> {
    match (&p.public_key, &p.public_key_file, &p.jwk) {
        (Some(pem), None, None) => VerifyingKey::from_spki_pem(pem),
        (None, Some(path), None) => {
            let path = dir.join(path);
            let pem = std::fs::read_to_string(&path).map_err(|e| {
                Error::malformed("bad-policy", format!("reading {}: {e}", path.display()))
            })?;
            VerifyingKey::from_spki_pem(&pem)
        }
        (None, None, Some(jwk)) => VerifyingKey::from_jwk(jwk),
        _ => Err(Error::malformed(
            "bad-policy",
            "give exactly one of public_key, public_key_file or jwk",
        )),
    }
}

/// A policy's key_types, lowercase; `None` when the policy does not restrict them.
fn key_types(
    place: &Place<'_>,
    policy: &str,
    at: usize,
    list: Option<&[Spanned<String>]>,
) -> Result<Option<Vec<String>>> {
    let Some(list) = list else {
        return Ok(None);
    };
    if list.is_empty() {
        return Err(place.error(at, format!("policy {policy:?} has an empty key_types list")));
    }
    list.iter()
        .map(|k| {
            let kind = k.get_ref().to_ascii_lowercase();
            if KEY_TYPES.contains(&kind.as_str()) {
                Ok(kind)
            } else {
                Err(place.error(
                    k.span().start,
                    format!(
                        "key type {:?} is not one of {}",
                        k.get_ref(),
                        KEY_TYPES.join(", ")
                    ),
                ))
            }
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// (serverAuth, clientAuth) from a policy's ekus; both when it names none.
fn ekus(place: &Place<'_>, ekus: Option<&Spanned<Vec<Spanned<String>>>>) -> Result<(bool, bool)> {
    let Some(ekus) = ekus else {
        return Ok((true, true));
    };
    let (mut server, mut client) = (false, false);
    for e in ekus.get_ref() {
        match e.get_ref().as_str() {
            "server" => server = true,
            "client" => client = true,
            other => {
                return Err(place.error(
                    e.span().start,
                    format!("EKU {other:?} must be \"server\" or \"client\""),
                ))
            }
        }
    }
    if !server && !client {
        return Err(place.error(
            ekus.span().start,
            "ekus must list \"server\", \"client\" or both",
        ));
    }
    Ok((server, client))
}

/// The `*.toml` files of a policy directory in name order, skipping hidden files (editor
/// locks and swap files) and anything that is not a regular file.
fn policy_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let bad = |e: std::io::Error| {
        Error::malformed(
            "bad-policy",
            format!("reading policy directory {}: {e}", dir.display()),
        )
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(bad)? {
        let path = entry.map_err(bad)?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && path.extension().is_some_and(|x| x == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn check_provisioner_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PROVISIONER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "provisioner name {name:?} must be 1 to {MAX_PROVISIONER_NAME_LEN} letters, digits, \
             hyphens, underscores or dots"
        ))
    }
}

/// Checks a provisioner name as `sigil provisioner create` takes it.
pub fn parse_provisioner_name(name: &str) -> Result<String> {
    check_provisioner_name(name).map_err(|e| Error::malformed("bad-provisioner", e))?;
    if name == ADMIN_PROVISIONER {
        return Err(Error::malformed(
            "bad-provisioner",
            format!("provisioner name {name:?} is reserved for the built-in admin provisioner"),
        ));
    }
    Ok(name.to_owned())
}

const IDENTITY: &str = "{identity}";
const TRUST_DOMAIN: &str = "{trust_domain}";

/// Checks that a pattern uses only the known placeholders, and `{trust_domain}` only when
/// the server has one.
fn check_placeholders(
    pattern: &str,
    trust_domain: Option<&str>,
) -> std::result::Result<(), String> {
    let mut rest = pattern;
    while let Some(open) = rest.find(['{', '}']) {
        let tail = &rest[open..];
        let placeholder = [IDENTITY, TRUST_DOMAIN]
            .into_iter()
            .find(|p| tail.starts_with(p));
        match placeholder {
            Some(TRUST_DOMAIN) if trust_domain.is_none() => {
                return Err(format!(
                    "{pattern:?} uses {{trust_domain}} but the server has no trust domain; set \
                     --trust-domain (or trust_domain in sigil.toml) or write the domain out"
                ))
            }
            Some(p) => rest = &tail[p.len()..],
            None => {
                return Err(format!(
                    "{pattern:?} has an unknown placeholder; only {{identity}} and \
                     {{trust_domain}} exist"
                ))
            }
        }
    }
    Ok(())
}

fn substitute(pattern: &str, identity: &Identity, trust_domain: Option<&str>) -> String {
    let s = pattern.replace(IDENTITY, identity.as_str());
    match trust_domain {
        Some(td) => s.replace(TRUST_DOMAIN, td),
        None => s,
    }
}

/// A stand-in for the placeholders, so a pattern's syntax can be checked as a name.
fn probe(pattern: &str) -> String {
    pattern.replace(IDENTITY, "x").replace(TRUST_DOMAIN, "x")
}

/// Validates a DNS pattern and returns it lowercase, without a trailing dot.
fn dns_rule(pattern: &str, trust_domain: Option<&str>) -> std::result::Result<String, String> {
    check_placeholders(pattern, trust_domain)?;
    let lower = pattern.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower).to_owned();
    if lower.split('.').any(|l| l.contains('*') && l != "*") {
        return Err(format!(
            "DNS pattern {pattern:?} uses * inside a label; * must stand for a whole label, as in \
             *.svc.internal"
        ));
    }
    let labels: Vec<String> = probe(&lower)
        .split('.')
        .map(|l| {
            if l == "*" {
                "x".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    match San::parse(&labels.join(".")) {
        Ok(San::Dns(_)) => Ok(lower),
        Ok(_) => Err(format!(
            "DNS pattern {pattern:?} is an address or URI; put those under ip or uri"
        )),
        Err(_) => Err(format!(
            "DNS pattern {pattern:?} does not make a DNS name: use labels of letters, digits \
             and inner hyphens, placeholders, and * as a whole label"
        )),
    }
}

/// Validates an IP address or CIDR network; host bits must be zero.
fn ip_rule(s: &str) -> std::result::Result<(IpAddr, u8), String> {
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?} has a prefix length that is not 0 to {max}"))?
    };
    if mask(&addr, len) != addr {
        return Err(format!(
            "{s:?} has host bits set; write the network address, as in {}/{len}",
            mask(&addr, len)
        ));
    }
    Ok((addr, len))
}

/// Validates a URI pattern: exact, or ending in `/*` for every URI under that path.
fn uri_rule(pattern: &str, trust_domain: Option<&str>) -> std::result::Result<(), String> {
    check_placeholders(pattern, trust_domain)?;
    let (body, prefix) = match pattern.strip_suffix('*') {
        Some(body) => (body, true),
        None => (pattern, false),
    };
    if body.contains('*') {
        return Err(format!(
            "URI pattern {pattern:?} has a * that is not at its end"
        ));
    }
    if prefix && !body.ends_with('/') {
        return Err(format!(
            "URI pattern {pattern:?}: a trailing * must follow a /, as in \
             spiffe://example.org/ci/*, so that it cannot stretch a host or path segment"
        ));
    }
    let stand_in = format!("{}{}", probe(body), if prefix { "x" } else { "" });
    match San::parse(&stand_in) {
        Ok(San::Uri(_)) => Ok(()),
        _ => Err(format!(
            "URI pattern {pattern:?} is not an absolute URI such as spiffe://example.org/payments"
        )),
    }
}

/// Compares label by label; a `*` label in the pattern matches exactly one label of the name,
/// and a wildcard name matches only a pattern with `*` in the same place.
fn dns_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let n: Vec<&str> = name.split('.').collect();
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| *p == "*" || p == n)
}

/// The address with all but the first `len` bits cleared.
fn mask(ip: &IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(*a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(*a) & m).into())
        }
    }
}

fn ip_in(ip: &IpAddr, net: &IpAddr, len: u8) -> bool {
    ip.is_ipv4() == net.is_ipv4() && mask(ip, len) == mask(net, len)
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
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

    fn load_files(files: &[(&str, &str)], defaults: Defaults) -> Result<PolicySet> {
        let dir = tempfile::tempdir().unwrap();
        let ci = SigningKey::generate(Algorithm::EdDSA).unwrap().0;
        std::fs::write(dir.path().join("ci.pub"), ci.public_key_pem()).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        PolicySet::load(dir.path(), key(), defaults)
    }

    fn set_with(text: &str) -> Result<PolicySet> {
        load_files(&[("p.toml", text)], defaults())
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
provisioners = ["ci"]
dns = ["{identity}.ci.internal"]
uri = ["spiffe://{trust_domain}/ci/*"]
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
                "spiffe://example.org/ci/jobs/42",
            ],
            None,
        )
        .unwrap();
        assert_eq!(d.ttl, Duration::from_secs(3600));
        assert!(d.rule.contains("\"ci builds\" in p.toml:9"), "{}", d.rule);
        assert!(d.ttl_reason.contains("default_ttl of policy"));
        assert_eq!(d.max_ttl, Duration::from_secs(7200));
        assert!(d
            .max_ttl_reason
            .contains("max_cert_ttl of provisioner \"ci\" in p.toml:3"));

        let e = decide(&set, "ci", "payments", &[], None).unwrap_err();
        assert_eq!(e.code, "identity-not-allowed");
        assert!(
            e.detail.contains("\"ci\" in p.toml:3") && e.detail.contains("ci-*"),
            "{}",
            e.detail
        );
        let e = decide(&set, "ci", "ci-x", &["ci-y.ci.internal"], None).unwrap_err();
        assert_eq!(e.code, "name-not-allowed");
        assert!(
            e.detail.contains("ci-y.ci.internal") && e.detail.contains("\"ci builds\" in p.toml:9"),
            "{}",
            e.detail
        );
        for outside in [
            "10.2.0.1",
            "spiffe://example.org/ci",
            "spiffe://other.org/ci/x",
        ] {
            let e = decide(&set, "ci", "ci-x", &[outside], None).unwrap_err();
            assert_eq!(e.code, "name-not-allowed", "{outside}");
        }
        let e = decide(&set, "ci", "ci-x", &[], Some(3 * 3600)).unwrap_err();
        assert_eq!(e.code, "ttl-too-long");
        assert!(e.detail.contains("longer than 2h"), "{}", e.detail);
        assert_eq!(
            decide(&set, "ci", "ci-x", &[], Some(7200)).unwrap().ttl,
            Duration::from_secs(7200)
        );
        // With a [[policy]] in force, admin tokens need a policy too, and the refusal points
        // at the policy that nearly applied.
        let e = decide(&set, "admin", "ci-x", &[], None).unwrap_err();
        assert_eq!(e.code, "no-policy");
        assert!(
            e.detail.contains("only for provisioners ci"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn key_types_and_ekus() {
        let set = set_with(
            "[[policy]]\nname = \"rsa only\"\nidentities = [\"legacy\"]\nkey_types = [\"rsa\"]\n\
             ekus = [\"client\"]\n",
        )
        .unwrap();
        let identity = Identity::parse("legacy").unwrap();
        let req = |key| Request {
            provisioner: set.provisioner("admin").unwrap(),
            identity: &identity,
            sans: &[],
            ttl: None,
            key: Some(key),
        };
        let d = set.evaluate(&req(KeyKind::Rsa(3072))).unwrap();
        assert!(d.client_auth && !d.server_auth);
        let e = set.evaluate(&req(KeyKind::EcdsaP256)).unwrap_err();
        assert_eq!(e.code, "key-type-not-allowed");
    }

    #[test]
    fn builtin_rule() {
        let set = PolicySet::builtin(key(), defaults());
        let d = decide(&set, "admin", "payments", &["payments.internal"], None).unwrap();
        assert_eq!(d.ttl, Duration::from_secs(86_400));
        assert_eq!(
            decide(&set, "admin", "p", &["*.internal"], None)
                .unwrap_err()
                .code,
            "wildcard-not-allowed"
        );
        // A file with provisioners but no [[policy]] keeps the built-in rule, which honours
        // admin tokens only.
        let only_provisioner = CI.split("[[policy]]").next().unwrap();
        let set = set_with(only_provisioner).unwrap();
        assert!(decide(&set, "admin", "payments", &["payments.internal"], None).is_ok());
        assert_eq!(
            decide(&set, "ci", "ci-1", &[], None).unwrap_err().code,
            "no-policy"
        );
    }

    #[test]
    fn wildcards_and_token_names() {
        let set = set_with(
            r#"
[[policy]]
name = "edge"
identities = ["edge"]
dns = ["*.edge.internal"]
allow_wildcards = true

[[policy]]
name = "plain"
identities = ["plain"]
dns = ["*.plain.internal"]

[[policy]]
name = "operators"
identities = ["*"]
provisioners = ["admin"]
allow_token_names = true
"#,
        )
        .unwrap();
        assert!(decide(
            &set,
            "admin",
            "edge",
            &["*.edge.internal", "a.edge.internal"],
            None
        )
        .is_ok());
        assert_eq!(
            decide(&set, "admin", "edge", &["*.x.edge.internal"], None)
                .unwrap_err()
                .code,
            "name-not-allowed"
        );
        // A * label in a pattern matches one label, but a wildcard name needs allow_wildcards.
        assert!(decide(&set, "admin", "plain", &["a.plain.internal"], None).is_ok());
        let e = decide(&set, "admin", "plain", &["*.plain.internal"], None).unwrap_err();
        assert_eq!(e.code, "wildcard-not-allowed");
        assert!(e.detail.contains("\"plain\""), "{}", e.detail);
        // The operators' catch-all honours whatever the admin token names, but no wildcard.
        assert!(decide(
            &set,
            "admin",
            "payments",
            &["anything.example", "10.9.9.9"],
            None
        )
        .is_ok());
        assert_eq!(
            decide(&set, "admin", "payments", &["*.example"], None)
                .unwrap_err()
                .code,
            "wildcard-not-allowed"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\ndns = [\"bad name\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nmax_ttl = \"forever\"\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nbogus = 1\n",
                4,
            ),
            ("[[policy]]\nname = \"a\"\nidentities = [\"Bad\"]\n", 3),
            ("[[policy]]\nname = \"a\"\nidentities = []\n", 3),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\ndns = [\"a*.x\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\ndns = [\"{service}.x\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\ndns = [\"10.0.0.1\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nip = [\"10.1.2.3/16\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nip = [\"10.0.0.0/33\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nuri = [\"spiffe://x/a*\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nuri = [\"spiffe://x*\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nuri = [\"not a uri\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nekus = []\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nekus = [\"code\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nkey_types = [\"dsa\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\n\
                 max_ttl = \"1h\"\ndefault_ttl = \"2h\"\n",
                5,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nprovisioners = [\"nobody\"]\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\n\n\
                 [[policy]]\nname = \"a\"\nidentities = [\"x\"]\n",
                6,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\nallow_token_names = true\n",
                4,
            ),
            (
                "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\n\
                 provisioners = [\"admin\"]\ndns = [\"x\"]\nallow_token_names = true\n",
                6,
            ),
            (
                "[[provisioner]]\nname = \"admin\"\n\
                 public_key_file = \"ci.pub\"\nidentities = [\"x\"]\n",
                2,
            ),
            (
                "[[provisioner]]\nname = \"ci ci\"\n\
                 public_key_file = \"ci.pub\"\nidentities = [\"x\"]\n",
                2,
            ),
            (
                "[[provisioner]]\nname = \"ci\"\npublic_key_file = \"ci.pub\"\nidentities = []\n",
                2,
            ),
            (
                "[[provisioner]]\nname = \"ci\"\npublic_key = \"nope\"\nidentities = [\"x\"]\n",
                2,
            ),
            (
                "[[provisioner]]\nname = \"ci\"\n\
                 public_key_file = \"missing.pub\"\nidentities = [\"x\"]\n",
                2,
            ),
            ("[[provisioner]]\nname = \"ci\"\nidentities = [\"x\"]\n", 2),
        ];
        for (text, line) in cases {
            let e = set_with(text).expect_err(text);
            assert_eq!(e.code, "bad-policy");
            assert!(
                e.detail.contains(&format!("p.toml:{line}: ")),
                "want line {line} for {text:?}, got {}",
                e.detail
            );
        }
    }

    #[test]
    fn trust_domain_placeholder_needs_a_trust_domain() {
        let text = "[[policy]]\nname = \"a\"\nidentities = [\"ok\"]\n\
                    uri = [\"spiffe://{trust_domain}/{identity}\"]\n";
        assert!(set_with(text).is_ok());
        let none = Defaults {
            trust_domain: None,
            ..defaults()
        };
        let e = load_files(&[("p.toml", text)], none).unwrap_err();
        assert!(
            e.detail.contains("p.toml:4: ") && e.detail.contains("--trust-domain"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn provisioners_may_be_defined_in_a_later_file_and_only_once() {
        let policy = "[[policy]]\nname = \"a\"\nidentities = [\"ci-*\"]\nprovisioners = [\"ci\"]\n";
        let prov = CI.split("[[policy]]").next().unwrap();
        assert!(load_files(&[("a.toml", policy), ("b.toml", prov)], defaults()).is_ok());
        let e = load_files(&[("a.toml", prov), ("b.toml", prov)], defaults()).unwrap_err();
        assert!(
            e.detail.contains("b.toml:3: ") && e.detail.contains("already defined in a.toml:3"),
            "{}",
            e.detail
        );
    }

    #[test]
    fn files_are_read_in_name_order_skipping_hidden_ones() {
        let first =
            "[[policy]]\nname = \"first\"\nidentities = [\"svc\"]\ndns = [\"a.internal\"]\n";
        let second =
            "[[policy]]\nname = \"second\"\nidentities = [\"svc\"]\ndns = [\"b.internal\"]\n";
        let set = load_files(
            &[
                ("20-b.toml", second),
                ("10-a.toml", first),
                (".#10-a.toml", "not toml at all ["),
                ("notes.txt", "ignored"),
            ],
            defaults(),
        )
        .unwrap();
        assert_eq!(set.files.len(), 2);
        assert!(decide(&set, "admin", "svc", &["a.internal"], None).is_ok());
        let e = decide(&set, "admin", "svc", &["b.internal"], None).unwrap_err();
        assert!(
            e.detail.contains("\"first\" in 10-a.toml:2"),
            "{}",
            e.detail
        );
        assert!(
            set.warnings
                .iter()
                .any(|w| w.contains("\"second\" is never used")),
            "{:?}",
            set.warnings
        );
    }

    #[test]
    fn limits_above_the_server_are_capped_and_reported() {
        let text = r#"
[[provisioner]]
name = "ci"
public_key_file = "ci.pub"
identities = ["ci-*"]
max_cert_ttl = "30d"
max_token_lifetime = "7d"

[[policy]]
name = "ci"
identities = ["ci-*"]
max_ttl = "30d"
"#;
        let set = set_with(text).unwrap();
        assert_eq!(set.warnings.len(), 3, "{:?}", set.warnings);
        assert_eq!(
            set.provisioner("ci").unwrap().max_token_lifetime,
            Duration::from_secs(3600)
        );
        let d = decide(&set, "ci", "ci-1", &[], None).unwrap();
        assert_eq!(d.max_ttl, Duration::from_secs(86_400));
        assert_eq!(d.max_ttl_reason, "the server's max_ttl");
        let e = decide(&set, "ci", "ci-1", &[], Some(2 * 86_400)).unwrap_err();
        assert!(e.detail.contains("the server's max_ttl"), "{}", e.detail);
    }

    #[test]
    fn default_above_maximum_is_capped() {
        let text = r#"
[[provisioner]]
name = "ci"
public_key_file = "ci.pub"
identities = ["ci-*"]
max_cert_ttl = "30m"

[[policy]]
name = "ci"
identities = ["ci-*"]
default_ttl = "1h"
"#;
        let set = set_with(text).unwrap();
        let d = decide(&set, "ci", "ci-1", &[], None).unwrap();
        assert_eq!(d.ttl, Duration::from_secs(1800));
        assert!(
            d.ttl_reason.contains("capped at the max_cert_ttl"),
            "{}",
            d.ttl_reason
        );
    }

    #[test]
    fn repository_examples_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = PolicySet::load(&dir, key(), defaults()).unwrap();
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        assert!(set.provisioner("ci").is_some());
        assert!(set.policies.len() >= 3);
        // What the examples promise in their comments.
        assert!(decide(&set, "ci", "ci-build-42", &["localhost", "127.0.0.1"], None).is_ok());
        assert_eq!(
            decide(&set, "ci", "payments", &[], None).unwrap_err().code,
            "identity-not-allowed"
        );
        assert!(decide(&set, "admin", "payments", &["payments.svc.internal"], None).is_ok());
        assert_eq!(
            decide(&set, "admin", "payments", &["billing.svc.internal"], None)
                .unwrap_err()
                .code,
            "name-not-allowed"
        );
    }

    #[test]
    fn matching() {
        assert!(glob(b"ci-*", b"ci-build-42"));
        assert!(!glob(b"ci-*", b"ci-"));
        assert!(glob(b"*", b"a.b"));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"abc"));
        // Many stars against a long near-miss: quadratic, not exponential.
        let pattern = "*a".repeat(30) + "b";
        assert!(!glob(pattern.as_bytes(), "a".repeat(64).as_bytes()));
        assert!(dns_matches("*.svc.internal", "a.svc.internal"));
        assert!(!dns_matches("*.svc.internal", "a.b.svc.internal"));
        let net = |s: &str| ip_rule(s).unwrap();
        let (n, l) = net("10.1.0.0/16");
        assert!(ip_in(&"10.1.2.3".parse().unwrap(), &n, l));
        assert!(!ip_in(&"10.2.2.3".parse().unwrap(), &n, l));
        assert!(!ip_in(&"::ffff:10.1.2.3".parse().unwrap(), &n, l));
        let (n, l) = net("fd00::/8");
        assert!(ip_in(&"fd12::1".parse().unwrap(), &n, l));
        let (n, l) = net("0.0.0.0/0");
        assert!(ip_in(&"192.0.2.1".parse().unwrap(), &n, l));
        assert!(ip_rule("10.0.0.1/8").is_err());
    }
}
