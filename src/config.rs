//! Server settings: built-in defaults, overridden by `sigil.toml` in the data directory,
//! overridden by `SIGIL_*` environment variables and command-line flags.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use crate::names::parse_duration;

/// Every setting of `sigil serve`. Each flag may also be set by its environment variable or,
/// under the same name with underscores, in `DATA_DIR/sigil.toml`.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeArgs {
    /// Data directory holding CA material, keys and the SQLite database; created and
    /// initialized on first start [default: ./sigil-data]
    #[arg(long, env = "SIGIL_DATA_DIR")]
    #[serde(skip)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on for HTTPS [default: 127.0.0.1:8443]
    #[arg(long, env = "SIGIL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Database URL: sqlite:PATH or postgres://USER@HOST:PORT/DB
    /// [default: sqlite in the data directory]
    #[arg(long, env = "SIGIL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Largest number of database connections for requests, at least 2; the writer of
    /// issuance records holds one more [default: 16]
    #[arg(long, env = "SIGIL_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
    /// Directory of policy files (*.toml); without it, only admin-made tokens are honoured
    /// [default: none]
    #[arg(long, env = "SIGIL_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Public base URL of this CA, as peers reach it; used in CRL distribution points
    /// [default: https://localhost:PORT]
    #[arg(long, env = "SIGIL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Audience that bootstrap tokens must name [default: sigil]
    #[arg(long, env = "SIGIL_AUDIENCE")]
    pub audience: Option<String>,
    /// SPIFFE trust domain; when set, every certificate carries spiffe://DOMAIN/IDENTITY
    /// [default: none]
    #[arg(long, env = "SIGIL_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Certificate lifetime when neither request nor policy names one [default: 24h]
    #[arg(long, env = "SIGIL_DEFAULT_TTL")]
    pub default_ttl: Option<String>,
    /// Longest certificate lifetime any policy may grant [default: 24h]
    #[arg(long, env = "SIGIL_MAX_TTL")]
    pub max_ttl: Option<String>,
    /// Longest token lifetime honoured, counted from iat, whatever exp says [default: 1h]
    #[arg(long, env = "SIGIL_MAX_TOKEN_LIFETIME")]
    pub max_token_lifetime: Option<String>,
    /// Token lifetime for POST /v1/admin/tokens when the request names none [default: 10m]
    #[arg(long, env = "SIGIL_TOKEN_TTL")]
    pub token_ttl: Option<String>,
    /// CRL validity: nextUpdate is this long after thisUpdate [default: 24h]
    #[arg(long, env = "SIGIL_CRL_VALIDITY")]
    pub crl_validity: Option<String>,
    /// Longest delay between a revocation and the CRL that lists it [default: 5s]
    #[arg(long, env = "SIGIL_CRL_PUBLISH_DELAY")]
    pub crl_publish_delay: Option<String>,
    /// Extra DNS names for the server's own TLS certificate (repeatable) [default: none]
    #[arg(long = "dns", env = "SIGIL_DNS", value_delimiter = ',')]
    pub dns: Vec<String>,
    /// Extra IP addresses for the server's own TLS certificate (repeatable) [default: none]
    #[arg(long = "ip", env = "SIGIL_IP", value_delimiter = ',')]
    pub ip: Vec<IpAddr>,
    /// Organization name in the CA certificates made on first start [default: sigil]
    #[arg(long, env = "SIGIL_ORGANIZATION")]
    pub organization: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "SIGIL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Longest time one request may take before it is answered 503 [default: 10s]
    #[arg(long, env = "SIGIL_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
}

/// Settings after defaults, file, environment and flags are merged and checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub database_url: String,
    pub db_max_connections: u32,
    pub policies: Option<PathBuf>,
    /// `None` until known: `serve` fills in https://localhost:PORT once it has bound.
    pub public_url: Option<String>,
    pub audience: String,
    pub trust_domain: Option<String>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub max_token_lifetime: Duration,
    pub token_ttl: Duration,
    pub crl_validity: Duration,
    pub crl_publish_delay: Duration,
    pub dns: Vec<String>,
    pub ip: Vec<IpAddr>,
    pub organization: String,
    pub log_format: String,
    pub request_timeout: Duration,
}

pub const CONFIG_FILE: &str = "sigil.toml";
pub const DEFAULT_DATA_DIR: &str = "./sigil-data";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// The database URL used when none is configured: SQLite in the data directory.
pub fn default_database_url(data_dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", data_dir.join("sigil.db").display())
}

fn dur(v: &Option<String>, default: &str, what: &str) -> anyhow::Result<Duration> {
    let s = v.as_deref().unwrap_or(default);
    parse_duration(s).map_err(|e| anyhow::anyhow!("setting {what}: {}", e.detail))
}

impl ServeArgs {
    /// Merges `self` (flags and environment) over the config file in the data directory.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let file_path = data_dir.join(CONFIG_FILE);
        let file: ServeArgs = if file_path.exists() {
            let text = std::fs::read_to_string(&file_path)
                .with_context(|| format!("reading {}", file_path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", file_path.display()))?
        } else {
            ServeArgs::default()
        };
        let a = self.over(file);
        let listen = match a.listen {
            Some(l) => l,
            None => DEFAULT_LISTEN.parse().context("default listen address")?,
        };
        let default_ttl = dur(&a.default_ttl, "24h", "default_ttl")?;
        let max_ttl = dur(&a.max_ttl, "24h", "max_ttl")?;
        if default_ttl > max_ttl {
            anyhow::bail!("setting default_ttl: it is longer than max_ttl");
        }
        let log_format = a.log_format.unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            anyhow::bail!("setting log_format: must be text or json, not {log_format:?}");
        }
        let policies = a.policies.map(|p| {
            if p.is_relative() && !p.exists() {
                data_dir.join(p)
            } else {
                p
            }
        });
        let db_max_connections = a.db_max_connections.unwrap_or(16);
        if db_max_connections < 2 {
            // A CRL build holds a connection for its lock and reads with another.
            anyhow::bail!(
                "setting db_max_connections: must be at least 2, not {db_max_connections}: \
                 building a CRL holds one connection for its lock while it reads with another"
            );
        }
        Ok(Settings {
            database_url: a
                .database_url
                .unwrap_or_else(|| default_database_url(&data_dir)),
            db_max_connections,
            policies,
            public_url: a.public_url.map(|u| u.trim_end_matches('/').to_owned()),
            audience: a.audience.unwrap_or_else(|| "sigil".into()),
            trust_domain: a.trust_domain,
            default_ttl,
            max_ttl,
            max_token_lifetime: dur(&a.max_token_lifetime, "1h", "max_token_lifetime")?,
            token_ttl: dur(&a.token_ttl, "10m", "token_ttl")?,
            crl_validity: dur(&a.crl_validity, "24h", "crl_validity")?,
            crl_publish_delay: dur(&a.crl_publish_delay, "5s", "crl_publish_delay")?,
            dns: a.dns,
            ip: a.ip,
            organization: a.organization.unwrap_or_else(|| "sigil".into()),
            log_format,
            request_timeout: dur(&a.request_timeout, "10s", "request_timeout")?,
            listen,
            data_dir,
        })
    }

    fn over(self, file: ServeArgs) -> ServeArgs {
        ServeArgs {
            data_dir: self.data_dir,
            listen: self.listen.or(file.listen),
            database_url: self.database_url.or(file.database_url),
            db_max_connections: self.db_max_connections.or(file.db_max_connections),
            policies: self.policies.or(file.policies),
            public_url: self.public_url.or(file.public_url),
            audience: self.audience.or(file.audience),
            trust_domain: self.trust_domain.or(file.trust_domain),
            default_ttl: self.default_ttl.or(file.default_ttl),
            max_ttl: self.max_ttl.or(file.max_ttl),
            max_token_lifetime: self.max_token_lifetime.or(file.max_token_lifetime),
            token_ttl: self.token_ttl.or(file.token_ttl),
            crl_validity: self.crl_validity.or(file.crl_validity),
            crl_publish_delay: self.crl_publish_delay.or(file.crl_publish_delay),
            dns: if self.dns.is_empty() {
                file.dns
            } else {
                self.dns
            },
            ip: if self.ip.is_empty() { file.ip } else { self.ip },
            organization: self.organization.or(file.organization),
            log_format: self.log_format.or(file.log_format),
            request_timeout: self.request_timeout.or(file.request_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "max_ttl = \"2h\"\naudience = \"file\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            data_dir: Some(dir.path().into()),
            audience: Some("flag".into()),
            default_ttl: Some("1h".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.audience, "flag");
        assert_eq!(s.max_ttl, Duration::from_secs(7200));
        assert_eq!(s.crl_publish_delay, Duration::from_secs(5));
        assert!(s.database_url.starts_with("sqlite://"));
    }

    #[test]
    fn bad_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "no_such_setting = 1\n").unwrap();
        let args = ServeArgs {
            data_dir: Some(dir.path().into()),
            ..Default::default()
        };
        let err = format!("{:#}", args.resolve().unwrap_err());
        assert!(err.contains("sigil.toml"), "{err}");
    }

    #[test]
    fn too_few_database_connections_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (n, ok) in [(0, false), (1, false), (2, true)] {
            let args = ServeArgs {
                data_dir: Some(dir.path().into()),
                db_max_connections: Some(n),
                ..Default::default()
            };
            match args.resolve() {
                Ok(_) => assert!(ok, "{n} connections accepted"),
                Err(e) => {
                    assert!(!ok, "{n} connections refused: {e:#}");
                    assert!(format!("{e:#}").contains("at least 2"), "{e:#}");
                }
            }
        }
    }
}
