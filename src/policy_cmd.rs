//! The offline commands about who may get which certificate: `sigil provisioner create`,
//! `sigil policy check` and `sigil policy explain`. They read the same settings as the server
//! (flags, `SIGIL_*` variables, `DATA_DIR/sigil.toml`) and load policies with the same code,
//! so what they print is what the server will do.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::ca::KeyKind;
use crate::config::{ServeArgs, Settings};
use crate::error::Error;
use crate::names::{format_duration, parse_duration, Identity, San};
use crate::policy::{self, IdentityPattern, Names, PolicySet, Provisioner, ADMIN_PROVISIONER};
use crate::token::{Algorithm, SigningKey};

#[derive(Subcommand)]
pub enum ProvisionerCommand {
    /// Make a provisioner key pair: the private key goes to --out (0600), the TOML block to
    /// add to the policy directory goes to standard output
    Create {
        /// Provisioner name, as tokens will carry it in `iss`
        #[arg(long)]
        name: String,
        /// File for the private key (PKCS#8 PEM, mode 0600); never overwritten
        #[arg(long)]
        out: PathBuf,
        /// Signature algorithm of the key
        #[arg(long, default_value = "ES256", value_parser = ["ES256", "EdDSA"], ignore_case = true)]
        alg: String,
        /// Identity pattern the provisioner may vouch for, `*` standing for one or more
        /// characters (repeatable) [default: NAME-*]
        #[arg(long = "identity")]
        identities: Vec<String>,
        /// Longest certificate lifetime for tokens of this provisioner, such as 2h
        /// [default: the server's max_ttl]
        #[arg(long)]
        max_cert_ttl: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Load the policy directory as the server would and print what it holds; exits
    /// non-zero with FILE:LINE on the first error
    Check {
        #[command(flatten)]
        args: PolicyArgs,
    },
    /// Say whether a request would get a certificate, and which rule decides
    Explain {
        #[command(flatten)]
        args: PolicyArgs,
        /// Service identity the token would be for
        #[arg(long)]
        service: String,
        /// A name the certificate would carry (repeatable)
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Provisioner that would sign the token
        #[arg(long, default_value = ADMIN_PROVISIONER)]
        provisioner: String,
        /// Requested certificate lifetime, such as 2h [default: none requested]
        #[arg(long)]
        ttl: Option<String>,
        /// Key type of the CSR: p256, p384, ed25519, rsa2048, rsa3072 or rsa4096
        /// [default: not checked]
        #[arg(long)]
        key_type: Option<String>,
    },
}

/// The server settings that policies depend on. Each flag reads the same environment
/// variable and `sigil.toml` key as `sigil serve`.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Data directory whose sigil.toml holds the server's settings [default: ./sigil-data]
    #[arg(long, env = "SIGIL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of policy files (*.toml) [default: the server's setting]
    #[arg(long, env = "SIGIL_POLICIES")]
    pub policies: Option<PathBuf>,
    /// SPIFFE trust domain [default: the server's setting]
    #[arg(long, env = "SIGIL_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Certificate lifetime when neither request nor policy names one [default: 24h]
    #[arg(long, env = "SIGIL_DEFAULT_TTL")]
    pub default_ttl: Option<String>,
    /// Longest certificate lifetime any policy may grant [default: 24h]
    #[arg(long, env = "SIGIL_MAX_TTL")]
    pub max_ttl: Option<String>,
    /// Longest token lifetime honoured [default: 1h]
    #[arg(long, env = "SIGIL_MAX_TOKEN_LIFETIME")]
    pub max_token_lifetime: Option<String>,
}

impl PolicyArgs {
    /// The server's settings, merged exactly as `sigil serve` merges them.
    pub fn settings(self) -> anyhow::Result<Settings> {
        ServeArgs {
            data_dir: self.data_dir,
            policies: self.policies,
            trust_domain: self.trust_domain,
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            max_token_lifetime: self.max_token_lifetime,
            ..ServeArgs::default()
        }
        .resolve()
    }
}

fn detail(e: Error) -> anyhow::Error {
    anyhow::anyhow!(e.detail)
}

pub fn run_provisioner(cmd: ProvisionerCommand) -> anyhow::Result<()> {
    let ProvisionerCommand::Create {
        name,
        out,
        alg,
        identities,
        max_cert_ttl,
    } = cmd;
    let alg = if alg.eq_ignore_ascii_case("eddsa") {
        Algorithm::EdDSA
    } else {
        Algorithm::ES256
    };
    let created = create_provisioner(&name, &out, alg, &identities, max_cert_ttl.as_deref())?;
    eprintln!(
        "wrote the private key of provisioner {name:?} to {} (mode 0600): keep it secret, for \
         example as a CI secret; anyone holding it can get certificates for {}",
        out.display(),
        created.identities.join(", ")
    );
    eprintln!(
        "add the block below to a *.toml file in the CA's policy directory, check it with \
         `sigil policy check`, then reload the CA (SIGHUP) or restart it"
    );
    print!("{}", created.toml);
    Ok(())
}

/// What `provisioner create` made.
#[derive(Debug)]
pub struct CreatedProvisioner {
    pub identities: Vec<String>,
    /// The `[[provisioner]]` block and an example `[[policy]]`.
    pub toml: String,
}

/// Makes the key pair, writes the private key to `out` (refusing to replace a file), and
/// returns the TOML to add to the policy directory.
pub fn create_provisioner(
    name: &str,
    out: &std::path::Path,
    alg: Algorithm,
    identities: &[String],
    max_cert_ttl: Option<&str>,
) -> anyhow::Result<CreatedProvisioner> {
    let name = policy::parse_provisioner_name(name).map_err(detail)?;
    let identities = if identities.is_empty() {
        let default = format!("{name}-*");
        IdentityPattern::parse(&default).with_context(|| {
            format!("{name:?} does not make an identity pattern; give --identity")
        })?;
        vec![default]
    } else {
        for pattern in identities {
            IdentityPattern::parse(pattern).map_err(detail)?;
        }
        identities.to_vec()
    };
    let max_cert_ttl = max_cert_ttl
        .map(parse_duration)
        .transpose()
        .map_err(detail)?
        .map(format_duration);
    if out.exists() {
        bail!(
            "{} already exists; refusing to replace a key (choose another --out)",
            out.display()
        );
    }
    let (key, pem) = SigningKey::generate(alg).map_err(detail)?;
    crate::ca::keyfile::write_new_secret(out, pem.as_bytes())?;

    let quoted = identities
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut toml = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        toml,
        "[[provisioner]]\n\
         name = {name:?}\n\
         # {alg}; the private key is in {file} and never on the CA.\n\
         public_key = \"\"\"\n{public}\"\"\"\n\
         # The only identities this provisioner may vouch for.\n\
         identities = [{quoted}]",
        alg = alg.as_str(),
        file = out.file_name().unwrap_or_default().to_string_lossy(),
        public = key.public_key_pem(),
    );
    if let Some(ttl) = &max_cert_ttl {
        let _ = writeln!(toml, "max_cert_ttl = {ttl:?}");
    }
    let _ = writeln!(
        toml,
        "\n\
         # Which names its certificates may carry; adjust to your test setup.\n\
         [[policy]]\n\
         name = \"{name} certificates\"\n\
         identities = [{quoted}]\n\
         provisioners = [{name:?}]\n\
         dns = [\"localhost\", \"{{identity}}.internal\"]\n\
         ip = [\"127.0.0.1\", \"::1\"]"
    );
    if let Some(ttl) = &max_cert_ttl {
        let _ = writeln!(toml, "max_ttl = {ttl:?}");
    }
    Ok(CreatedProvisioner { identities, toml })
}

pub fn run_policy(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { args } => {
            let settings = args.settings()?;
            let set = load(&settings)?;
            print!("{}", summary(&settings, &set));
            Ok(())
        }
        PolicyCommand::Explain {
            args,
            service,
            sans,
            provisioner,
            ttl,
            key_type,
        } => {
            let settings = args.settings()?;
            let set = load(&settings)?;
            let request = ExplainRequest {
                service,
                sans,
                provisioner,
                ttl,
                key_type,
            };
            let (allowed, text) = explain(&settings, &set, &request)?;
            print!("{text}");
            if !allowed {
                bail!("the CA would refuse this request");
            }
            Ok(())
        }
    }
}

/// Loads the set as the server would. The admin provisioner's key is never used to verify
/// anything here, so a throwaway key stands in for it: the checks need no access to the CA's
/// private files.
fn load(settings: &Settings) -> anyhow::Result<PolicySet> {
    let (stand_in, _) = SigningKey::generate(Algorithm::ES256).map_err(detail)?;
    PolicySet::from_settings(settings, stand_in.verifying_key()).map_err(detail)
}

fn list<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn dur(d: Duration) -> String {
    format_duration(d)
}

fn provisioner_line(p: &Provisioner, server_max: Duration) -> String {
    let cert = match p.max_cert_ttl {
        Some(m) if m < server_max => dur(m),
        _ => format!("{} (server)", dur(server_max)),
    };
    format!(
        "  {} ({}): {}, identities {}, certificates at most {cert}, tokens honoured {} after iat\n",
        p.name,
        p.source,
        p.key.algorithm().as_str(),
        list(&p.identities),
        dur(p.max_token_lifetime),
    )
}

/// The report `policy check` prints.
pub fn summary(settings: &Settings, set: &PolicySet) -> String {
    let d = &set.defaults;
    let mut out = String::new();
    // Writing to a String cannot fail, so the results of writeln! are ignored below.
    match &settings.policies {
        Some(dir) => {
            let _ = writeln!(
                out,
                "policy directory {}: {} file(s)",
                dir.display(),
                set.files.len()
            );
        }
        None => {
            let _ = writeln!(out, "no policy directory configured (--policies)");
        }
    }
    for file in &set.files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let in_file = |source: &str| source.rsplit_once(':').is_some_and(|(f, _)| f == name);
        let provisioners = set
            .provisioners
            .values()
            .filter(|p| in_file(&p.source))
            .count();
        let policies = set.policies.iter().filter(|p| in_file(&p.source)).count();
        let _ = writeln!(
            out,
            "  {name}: {provisioners} provisioner(s), {policies} policy(ies)"
        );
    }
    let _ = writeln!(
        out,
        "\nserver limits: default_ttl {}, max_ttl {}, max_token_lifetime {}, trust domain {}",
        dur(d.default_ttl),
        dur(d.max_ttl),
        dur(d.max_token_lifetime),
        d.trust_domain.as_deref().unwrap_or("none")
    );
    let _ = writeln!(out, "\nprovisioners:");
    for p in set.provisioners.values() {
        out.push_str(&provisioner_line(p, d.max_ttl));
    }
    if set.policies.is_empty() {
        let _ = writeln!(
            out,
            "\nno [[policy]] in force: the built-in rule applies. Admin-made tokens get the \
             names they list (no wildcards); tokens of every other provisioner are refused."
        );
    } else {
        let _ = writeln!(
            out,
            "\npolicies, in the order they are tried (the first matching identity and \
             provisioner decides; anything else is refused):"
        );
        for (i, p) in set.policies.iter().enumerate() {
            out.push_str(&policy_block(i + 1, p, d));
        }
    }
    if !set.warnings.is_empty() {
        let _ = writeln!(out, "\nwarnings:");
        for w in &set.warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    let _ = writeln!(
        out,
        "\nok: {} provisioner(s), {} policy(ies), {} file(s)",
        set.provisioners.len(),
        set.policies.len(),
        set.files.len()
    );
    out
}

/// One numbered policy in the `check` report.
fn policy_block(number: usize, p: &policy::Policy, d: &policy::Defaults) -> String {
    let names = match &p.names {
        Names::FromToken => "whatever the token lists (allow_token_names)".to_owned(),
        Names::Listed(rules) if rules.is_empty() => "none besides the SPIFFE ID".into(),
        Names::Listed(rules) => list(rules),
    };
    let default = p
        .default_ttl
        .map(dur)
        .unwrap_or_else(|| format!("{} (server)", dur(d.default_ttl)));
    let max = match p.max_ttl {
        Some(m) if m < d.max_ttl => dur(m),
        _ => format!("{} (server)", dur(d.max_ttl)),
    };
    let usages: Vec<&str> = [(p.server_auth, "server"), (p.client_auth, "client")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
    format!(
        "  {number}. {:?} ({})\n     identities:   {}\n     provisioners: {}\n     \
         names:        {names}\n     lifetime:     default {default}, at most {max}\n     \
         key types:    {}\n     key usages:   {}\n     wildcards:    {}\n",
        p.name,
        p.source,
        list(&p.identities),
        p.provisioners
            .as_deref()
            .map(list)
            .unwrap_or_else(|| "any".into()),
        p.key_types
            .as_deref()
            .map(list)
            .unwrap_or_else(|| "any the CA accepts".into()),
        usages.join(", "),
        if p.allow_wildcards {
            "allowed"
        } else {
            "refused"
        },
    )
}

/// A request as `policy explain` takes it.
pub struct ExplainRequest {
    pub service: String,
    pub sans: Vec<String>,
    pub provisioner: String,
    pub ttl: Option<String>,
    pub key_type: Option<String>,
}

fn parse_key_type(s: &str) -> anyhow::Result<KeyKind> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "p256" => KeyKind::EcdsaP256,
        "p384" => KeyKind::EcdsaP384,
        "ed25519" => KeyKind::Ed25519,
        "rsa2048" => KeyKind::Rsa(2048),
        "rsa3072" => KeyKind::Rsa(3072),
        "rsa4096" => KeyKind::Rsa(4096),
        other => {
            bail!("key type {other:?} is not one of p256, p384, ed25519, rsa2048, rsa3072, rsa4096")
        }
    })
}

/// Decides `req` as the server would for a token of `req.provisioner` naming `req.sans` and a
/// CSR asking for them. Returns whether it is allowed and the explanation.
pub fn explain(
    settings: &Settings,
    set: &PolicySet,
    req: &ExplainRequest,
) -> anyhow::Result<(bool, String)> {
    let identity = Identity::parse(&req.service).map_err(detail)?;
    let spiffe = settings
        .trust_domain
        .as_ref()
        .map(|td| San::Uri(format!("spiffe://{td}/{identity}")));
    let mut sans = Vec::new();
    for s in &req.sans {
        let san = San::parse(s).map_err(detail)?;
        // The CA adds the SPIFFE ID itself, outside policy, as it does when signing.
        if Some(&san) != spiffe.as_ref() {
            sans.push(san);
        }
    }
    let ttl = req
        .ttl
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(detail)?;
    let key = req.key_type.as_deref().map(parse_key_type).transpose()?;
    let mut out = String::new();
    let Some(provisioner) = set.provisioner(&req.provisioner) else {
        let known: Vec<&str> = set.provisioners.keys().map(String::as_str).collect();
        let _ = writeln!(
            out,
            "refused (401 unknown-provisioner): token names provisioner {:?}, \
             which this CA does not know; known: {}",
            req.provisioner,
            known.join(", ")
        );
        return Ok((false, out));
    };
    let decision = set.evaluate(&policy::Request {
        provisioner,
        identity: &identity,
        sans: &sans,
        ttl,
        key,
    });
    match decision {
        Err(e) => {
            let _ = writeln!(
                out,
                "refused ({} {}): {}",
                crate::http::problem::status_of(e.kind).as_u16(),
                e.code,
                e.detail
            );
            Ok((false, out))
        }
        Ok(d) => {
            let mut names: Vec<String> = d.sans.iter().map(ToString::to_string).collect();
            if let Some(id) = &spiffe {
                names.push(format!("{id} (SPIFFE ID, added by the CA)"));
            }
            if names.is_empty() {
                names.push("none".into());
            }
            let mut usages = Vec::new();
            if d.server_auth {
                usages.push("serverAuth");
            }
            if d.client_auth {
                usages.push("clientAuth");
            }
            let _ = writeln!(
                out,
                "allowed by {}\n  provisioner: {} ({}), may authorize {}\n  identity:    {}\n  \
                 names:       {}\n  lifetime:    {} ({}); at most {} ({})\n  key types:   {}\n  \
                 key usages:  {}",
                d.rule,
                provisioner.name,
                provisioner.source,
                list(&provisioner.identities),
                identity,
                names.join(", "),
                dur(d.ttl),
                d.ttl_reason,
                dur(d.max_ttl),
                d.max_ttl_reason,
                d.key_types
                    .as_deref()
                    .map(list)
                    .unwrap_or_else(|| "any the CA accepts".into()),
                usages.join(", "),
            );
            Ok((true, out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(policies: &std::path::Path, trust_domain: Option<&str>) -> Settings {
        let data = tempfile::tempdir().unwrap();
        PolicyArgs {
            data_dir: Some(data.path().into()),
            policies: Some(policies.into()),
            trust_domain: trust_domain.map(Into::into),
            default_ttl: None,
            max_ttl: None,
            max_token_lifetime: None,
        }
        .settings()
        .unwrap()
    }

    fn ask(service: &str, sans: &[&str], provisioner: &str, ttl: Option<&str>) -> ExplainRequest {
        ExplainRequest {
            service: service.into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            provisioner: provisioner.into(),
            ttl: ttl.map(Into::into),
            key_type: None,
        }
    }

    #[test]
    fn created_provisioner_loads_and_verifies_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("ci.key");
        let created =
            create_provisioner("ci", &key_file, Algorithm::EdDSA, &[], Some("90m")).unwrap();
        assert_eq!(created.identities, vec!["ci-*"]);
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = create_provisioner("ci", &key_file, Algorithm::EdDSA, &[], None);
        assert!(again
            .unwrap_err()
            .to_string()
            .contains("refusing to replace"));

        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::write(policies.join("ci.toml"), &created.toml).unwrap();
        let s = settings(&policies, None);
        let set = load(&s).unwrap();
        let p = set.provisioner("ci").unwrap();
        assert_eq!(p.max_cert_ttl, Some(Duration::from_secs(5400)));
        // The printed public key is the written private key's.
        let signer =
            SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
        let now = 1_000;
        let claims = crate::token::Claims {
            iss: "ci".into(),
            sub: "ci-1".into(),
            sans: vec![],
            aud: vec!["sigil".into()],
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: crate::token::new_jti().unwrap(),
        };
        let token = crate::token::mint(&signer, &claims).unwrap();
        let expect = crate::token::Expectations {
            audience: "sigil",
            now,
            max_lifetime_secs: 600,
        };
        assert!(crate::token::parse(&token)
            .unwrap()
            .verify(&p.key, &expect)
            .is_ok());
        let (ok, text) = explain(&s, &set, &ask("ci-7", &["localhost"], "ci", None)).unwrap();
        assert!(ok, "{text}");
        assert!(text.contains("at most 1h30m"), "{text}");
    }

    #[test]
    fn bad_provisioner_arguments_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k.pem");
        for (name, ids, ttl) in [
            ("admin", vec![], None),
            ("has space", vec![], None),
            ("Upper", vec![], None),
            ("ci", vec!["Bad*".to_string()], None),
            ("ci", vec![], Some("forever")),
        ] {
            assert!(
                create_provisioner(name, &out, Algorithm::ES256, &ids, ttl).is_err(),
                "{name} {ids:?} {ttl:?}"
            );
            assert!(!out.exists(), "{name}: no key may be written");
        }
    }

    #[test]
    fn check_and_explain_the_repository_examples() {
        let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let s = settings(&policies, Some("example.org"));
        let set = load(&s).unwrap();
        let text = summary(&s, &set);
        assert!(
            text.contains("ci.toml: 1 provisioner(s), 1 policy(ies)"),
            "{text}"
        );
        assert!(
            text.contains("1. \"ci test certificates\" (ci.toml:"),
            "{text}"
        );
        assert!(text.contains("ok: 2 provisioner(s)"), "{text}");

        let (ok, text) = explain(
            &s,
            &set,
            &ask("ci-build-42", &["localhost", "127.0.0.1"], "ci", None),
        )
        .unwrap();
        assert!(ok, "{text}");
        assert!(text.contains("allowed by policy \"ci test certificates\" in ci.toml:"));
        assert!(
            text.contains("spiffe://example.org/ci-build-42 (SPIFFE ID"),
            "{text}"
        );
        assert!(
            text.contains("lifetime:    1h (the default_ttl of policy"),
            "{text}"
        );

        let (ok, text) = explain(&s, &set, &ask("payments", &[], "ci", None)).unwrap();
        assert!(!ok);
        assert!(text.contains("403 identity-not-allowed"), "{text}");
        let (ok, text) = explain(&s, &set, &ask("ci-1", &[], "ci", Some("3h"))).unwrap();
        assert!(!ok && text.contains("403 ttl-too-long"), "{text}");
        let (ok, text) = explain(&s, &set, &ask("ci-1", &[], "nobody", None)).unwrap();
        assert!(!ok && text.contains("401 unknown-provisioner"), "{text}");
        let (ok, text) = explain(
            &s,
            &set,
            &ask(
                "payments",
                &["billing.svc.internal"],
                ADMIN_PROVISIONER,
                None,
            ),
        )
        .unwrap();
        assert!(!ok, "{text}");
        assert!(
            text.contains("name-not-allowed")
                && text.contains("\"internal services\" in services.toml:"),
            "{text}"
        );
        let mut rsa = ask("ci-1", &[], "ci", None);
        rsa.key_type = Some("rsa2048".into());
        let (ok, text) = explain(&s, &set, &rsa).unwrap();
        assert!(!ok && text.contains("key-type-not-allowed"), "{text}");
    }

    #[test]
    fn settings_come_from_the_data_directory() {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(
            data.path().join(crate::config::CONFIG_FILE),
            "max_ttl = \"1h\"\ndefault_ttl = \"30m\"\n",
        )
        .unwrap();
        let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let s = PolicyArgs {
            data_dir: Some(data.path().into()),
            policies: Some(policies),
            trust_domain: None,
            default_ttl: None,
            max_ttl: None,
            max_token_lifetime: None,
        }
        .settings()
        .unwrap();
        let set = load(&s).unwrap();
        // The examples' 2h limits are now above the server's 1h, which check reports.
        assert!(!set.warnings.is_empty());
        let (ok, text) = explain(&s, &set, &ask("ci-1", &[], "ci", Some("2h"))).unwrap();
        assert!(!ok && text.contains("the server's max_ttl"), "{text}");
    }
}
