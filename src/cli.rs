//! Command-line interface: clap definitions, and each command's few lines of glue.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reqwest::Method;

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

/// How `serve` settings combine, shown under its options.
const SETTINGS_HELP: &str = "Settings: each option above but --data-dir and --addr-file may \
also be set in DATA_DIR/sigil.toml under its name with underscores (db_max_connections = 32, \
dns = [\"ca.internal\"]); its environment variable overrides the file, and the flag overrides \
both. The log level is read from SIGIL_LOG [default: info], for example SIGIL_LOG=sigil=debug.";

#[derive(Subcommand)]
pub enum Command {
    /// Run the CA; initializes an empty data directory on first start
    #[command(after_help = SETTINGS_HELP)]
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
    // Colour codes only for a person at a terminal, never into a file or a collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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
