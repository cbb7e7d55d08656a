//! Command-line interface: clap definitions, and each command's few lines of glue.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reqwest::Method;

use crate::client::admin::{self, ListOptions, RevokeTarget};
use crate::client::{AdminArgs, CaArgs, CaClient};
use crate::config::ServeArgs;

#[derive(Parser)]
#[command(
    name = "sigil",
    version,
    about = "An internal certificate authority for service-to-service mTLS"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the CA; initializes an empty data directory on first start
    Serve {
        #[command(flatten)]
        args: ServeArgs,
        /// Write the bound address here once serving (useful with --listen 127.0.0.1:0)
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Create root, intermediate, server certificate and the first admin key
    Init {
        #[command(flatten)]
        args: ServeArgs,
    },
    /// Make bootstrap tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke one certificate, or every certificate of a service and disable the service
    #[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "service"])))]
    Revoke {
        #[command(flatten)]
        ca: CaArgs,
        #[command(flatten)]
        admin: AdminArgs,
        /// Serial of the certificate to revoke (hex; colons allowed)
        #[arg(long)]
        serial: Option<String>,
        /// Service identity: revoke all its unexpired certificates and disable it
        #[arg(long)]
        service: Option<String>,
        /// RFC 5280 reason [default: unspecified]
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(crate::authority::REASONS))]
        reason: Option<String>,
        /// Print the CA's JSON answer
        #[arg(long)]
        json: bool,
    },
    /// Let a disabled service get certificates again (its revoked certificates stay revoked)
    Enable {
        #[command(flatten)]
        ca: CaArgs,
        #[command(flatten)]
        admin: AdminArgs,
        /// Service identity to enable
        #[arg(long)]
        service: String,
        /// Print the CA's JSON answer
        #[arg(long)]
        json: bool,
    },
    /// List and show issued certificates
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Subcommand)]
pub enum CertsCommand {
    /// List certificates, newest first
    List {
        #[command(flatten)]
        ca: CaArgs,
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this service's certificates
        #[arg(long)]
        service: Option<String>,
        /// Only certificates in this state
        #[arg(long, value_parser = ["active", "revoked", "expired"])]
        status: Option<String>,
        /// Certificates per page, 1 to 1000
        #[arg(long, default_value_t = crate::client::admin::DEFAULT_PAGE,
              value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Start after this cursor, as printed at the end of the previous page
        #[arg(long)]
        cursor: Option<String>,
        /// Follow the cursor through every page
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show one certificate
    Show {
        #[command(flatten)]
        ca: CaArgs,
        #[command(flatten)]
        admin: AdminArgs,
        /// Serial (hex; colons allowed)
        serial: String,
        /// Print the CA's JSON answer
        #[arg(long, conflicts_with = "pem")]
        json: bool,
        /// Print only the certificate, PEM
        #[arg(long)]
        pem: bool,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Ask the CA for a token (needs an admin key) and print it
    Create {
        #[command(flatten)]
        ca: CaArgs,
        #[command(flatten)]
        admin: AdminArgs,
        /// Service identity the token is for
        #[arg(long)]
        service: String,
        /// A name the holder may put in its certificate (repeatable)
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Token lifetime, such as 10m [default: the CA's token_ttl]
        #[arg(long)]
        ttl: Option<String>,
        /// Print the whole JSON answer (token, jti, expires_at) instead of the token alone
        #[arg(long)]
        json: bool,
    },
    /// Mint a token offline with a provisioner's private key
    Mint {
        /// PKCS#8 PEM private key of the provisioner (P-256 or Ed25519)
        #[arg(long)]
        provisioner_key: PathBuf,
        /// Provisioner name, as the CA's policy directory defines it
        #[arg(long)]
        provisioner: String,
        /// The CA's audience [default: sigil]
        #[arg(long, default_value = "sigil")]
        audience: String,
        /// Service identity
        #[arg(long)]
        service: String,
        /// A name the holder may put in its certificate (repeatable)
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Token lifetime
        #[arg(long, default_value = "10m")]
        ttl: String,
    },
}

pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SIGIL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { args, addr_file } => {
            let settings = args.resolve()?;
            init_logging(settings.log_format == "json");
            crate::server::serve(settings, addr_file).await
        }
        Command::Init { args } => {
            let settings = args.resolve()?;
            init_logging(settings.log_format == "json");
            let report = crate::server::init(&settings).await?;
            println!("root fingerprint (SHA-256): {}", report.root_fingerprint);
            if let Some(key) = report.admin_key {
                println!(
                    "admin key (shown once; saved in {}):\n  {key}",
                    settings.data_dir.join("admin.key").display()
                );
            }
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            ca,
            admin,
            service,
            sans,
            ttl,
            json,
        }) => {
            let client = CaClient::new(&ca).await?;
            let body = serde_json::json!({ "service": service, "sans": sans, "ttl": ttl });
            let grant: serde_json::Value = client
                .call(
                    Method::POST,
                    "/v1/admin/tokens",
                    Some(&admin.key()?),
                    Some(body),
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&grant)?);
            } else {
                println!(
                    "{}",
                    grant["token"]
                        .as_str()
                        .context("the CA's answer has no token")?
                );
            }
            Ok(())
        }
        Command::Revoke {
            ca,
            admin,
            serial,
            service,
            reason,
            json,
        } => {
            let target = match (serial, service) {
                (Some(serial), _) => RevokeTarget::Serial(serial),
                (None, Some(service)) => RevokeTarget::Service(service),
                (None, None) => anyhow::bail!("name what to revoke: --serial or --service"),
            };
            admin::revoke(&ca, &admin, target, reason.as_deref(), json).await
        }
        Command::Enable {
            ca,
            admin,
            service,
            json,
        } => admin::enable(&ca, &admin, &service, json).await,
        Command::Certs(CertsCommand::List {
            ca,
            admin,
            service,
            status,
            limit,
            cursor,
            all,
            json,
        }) => {
            let opts = ListOptions {
                service,
                status,
                limit: Some(limit),
                cursor,
                all,
            };
            admin::list(&ca, &admin, &opts, json).await
        }
        Command::Certs(CertsCommand::Show {
            ca,
            admin,
            serial,
            json,
            pem,
        }) => admin::show(&ca, &admin, &serial, json, pem).await,
        Command::Token(TokenCommand::Mint {
            provisioner_key,
            provisioner,
            audience,
            service,
            sans,
            ttl,
        }) => {
            let pem = crate::ca::keyfile::read_secret(&provisioner_key)?;
            let key = crate::token::SigningKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!(e.detail))?;
            crate::names::Identity::parse(&service).map_err(|e| anyhow::anyhow!(e.detail))?;
            for s in &sans {
                crate::names::San::parse(s).map_err(|e| anyhow::anyhow!(e.detail))?;
            }
            let ttl = crate::names::parse_duration(&ttl).map_err(|e| anyhow::anyhow!(e.detail))?;
            let now = crate::authority::now_secs();
            let claims = crate::token::Claims {
                iss: provisioner,
                sub: service,
                sans,
                aud: vec![audience],
                iat: now,
                nbf: now,
                exp: now + ttl.as_secs() as i64,
                jti: crate::token::new_jti().map_err(|e| anyhow::anyhow!(e.detail))?,
            };
            println!(
                "{}",
                crate::token::mint(&key, &claims).map_err(|e| anyhow::anyhow!(e.detail))?
            );
            Ok(())
        }
    }
}
