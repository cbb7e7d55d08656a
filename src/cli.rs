//! Command-line interface: clap definitions, and each command's few lines of glue.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reqwest::Method;

use crate::client::admin::{self, ListOptions, RevokeTarget};
use crate::client::request::KeyType;
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
        #[command(flatten)]
        import: ImportArgs,
    },
    /// Make bootstrap tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Make provisioner keys, for minting tokens offline (CI)
    #[command(subcommand)]
    Provisioner(crate::policy_cmd::ProvisionerCommand),
    /// Check policy files and explain what they allow, offline
    #[command(subcommand)]
    Policy(crate::policy_cmd::PolicyCommand),
    /// Get a certificate with a bootstrap token; the key is made here and never sent
    Request(RequestArgs),
    /// Renew the certificate in a directory over mTLS, with a new key
    Renew(RenewArgs),
    /// Keep a certificate directory fresh: renew, refresh bundle and CRLs, reload the workload
    Agent(AgentArgs),
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
        #[arg(
            long,
            value_parser = clap::builder::PossibleValuesParser::new(crate::authority::REASONS)
        )]
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

/// `sigil request`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub ca: CaArgs,
    /// The bootstrap token (visible to other users in the process list: prefer --token-file)
    #[arg(
        long,
        env = "SIGIL_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bootstrap token (mode 0600)
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Directory to write cert.pem, key.pem and ca.pem into
    #[arg(long)]
    pub out: PathBuf,
    /// A name to ask for (repeatable) [default: every name the token allows]
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// Type of the new key
    #[arg(long, value_enum, default_value = "p256")]
    pub key_type: KeyType,
    /// Certificate lifetime, such as 12h [default: the CA's]
    #[arg(long)]
    pub ttl: Option<String>,
    /// Also write crls.pem, the CA's CRLs
    #[arg(long)]
    pub crl: bool,
}

/// `sigil renew`.
#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub ca: CaArgs,
    /// Directory holding cert.pem, key.pem and ca.pem; trusts its ca.pem unless --root or
    /// --fingerprint is given
    #[arg(long)]
    pub out: PathBuf,
    /// Certificate lifetime, such as 12h [default: the CA's]
    #[arg(long)]
    pub ttl: Option<String>,
    /// Type of the new key [default: that of the current key]
    #[arg(long, value_enum)]
    pub key_type: Option<KeyType>,
}

/// `sigil agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub ca: CaArgs,
    /// Directory to keep fresh
    #[arg(long)]
    pub out: PathBuf,
    /// File holding a bootstrap token, used when the directory has no certificate or its
    /// certificate can no longer renew (mode 0600)
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Shell command to run after the files change (sh -c; SIGIL_DIR names the directory)
    #[arg(long)]
    pub exec: Option<String>,
    /// File holding the workload's process id, to signal after the files change
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Signal for --pid-file
    #[arg(long, default_value = "HUP", requires = "pid_file")]
    pub signal: crate::client::agent::Signal,
    /// Also keep crls.pem, the CA's CRLs, fresh
    #[arg(long)]
    pub crl: bool,
    /// Certificate lifetime, such as 12h [default: the CA's]
    #[arg(long)]
    pub ttl: Option<String>,
    /// Type of new keys [default: that of the current key, P-256 for the first]
    #[arg(long, value_enum)]
    pub key_type: Option<KeyType>,
    /// A name to ask for with the token (repeatable) [default: every name the token allows]
    #[arg(long = "san")]
    pub sans: Vec<String>,
    /// How often to check the bundle and CRLs for changes
    #[arg(long, default_value = "1m")]
    pub poll_interval: String,
}

/// Existing CA files for `sigil init` to adopt instead of creating new ones.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Import this root certificate (PEM) instead of creating one; needs all four --import-* files
    #[arg(
        long,
        requires_all = ["import_root_key", "import_intermediate_cert", "import_intermediate_key"]
    )]
    pub import_root_cert: Option<PathBuf>,
    /// The imported root's private key (PKCS#8 PEM)
    #[arg(long, requires = "import_root_cert")]
    pub import_root_key: Option<PathBuf>,
    /// The imported intermediate certificate (PEM), signed by the root
    #[arg(long, requires = "import_root_cert")]
    pub import_intermediate_cert: Option<PathBuf>,
    /// The imported intermediate's private key (PKCS#8 PEM)
    #[arg(long, requires = "import_root_cert")]
    pub import_intermediate_key: Option<PathBuf>,
}

impl ImportArgs {
    fn files(&self) -> Option<crate::ca::ImportFiles> {
        Some(crate::ca::ImportFiles {
            root_cert: self.import_root_cert.clone()?,
            root_key: self.import_root_key.clone()?,
            intermediate_cert: self.import_intermediate_cert.clone()?,
            intermediate_key: self.import_intermediate_key.clone()?,
        })
    }
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
        /// PKCS#8 PEM private key of the provisioner (P-256 or Ed25519), mode 0600
        #[arg(long, env = "SIGIL_PROVISIONER_KEY")]
        provisioner_key: PathBuf,
        /// Provisioner name, as the CA's policy directory defines it
        #[arg(long, env = "SIGIL_PROVISIONER")]
        provisioner: String,
        /// The CA's audience [default: sigil]
        #[arg(long, env = "SIGIL_AUDIENCE", default_value = "sigil")]
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
    // Colour only for a person at a terminal; log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Provisioner(cmd) => crate::policy_cmd::run_provisioner(cmd),
        Command::Policy(cmd) => crate::policy_cmd::run_policy(cmd),
        Command::Request(args) => {
            init_logging(false);
            request(args).await
        }
        Command::Renew(args) => {
            init_logging(false);
            renew(args).await
        }
        Command::Agent(args) => {
            init_logging(false);
            agent(args).await
        }
        Command::Serve { args, addr_file } => {
            let settings = args.resolve()?;
            init_logging(settings.log_format == "json");
            crate::server::serve(settings, addr_file).await
        }
        Command::Init { args, import } => {
            let settings = args.resolve()?;
            init_logging(settings.log_format == "json");
            let report = crate::server::init(&settings, import.files().as_ref()).await?;
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

fn parse_sans(sans: &[String]) -> anyhow::Result<Vec<crate::names::San>> {
    sans.iter()
        .map(|s| crate::names::San::parse(s).map_err(|e| anyhow::anyhow!(e.detail)))
        .collect()
}

/// Writes a new generation of the certificate directory and says what it holds.
fn write_issued(
    dir: &crate::client::files::CertDir,
    issued: &crate::client::request::Issued,
    key_pem: String,
    ca_pem: String,
    crls_pem: Option<String>,
) -> anyhow::Result<()> {
    dir.write(&crate::client::files::Material {
        chain_pem: issued.chain.clone(),
        key_pem,
        ca_pem,
        crls_pem,
    })?;
    println!(
        "wrote {} (serial {}, valid until {})",
        dir.path().display(),
        issued.serial,
        crate::client::request::rfc3339(issued.not_after)
    );
    Ok(())
}

async fn request(args: RequestArgs) -> anyhow::Result<()> {
    use crate::client::{files, request};
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(f)) => crate::ca::keyfile::read_secret(f)?.trim().to_owned(),
        (None, None) => {
            anyhow::bail!("give the bootstrap token with --token-file FILE or SIGIL_TOKEN")
        }
    };
    let sans = parse_sans(&args.sans)?;
    let client = CaClient::new(&args.ca).await?;
    let (issued, key_pem) =
        request::request(&client, &token, &sans, args.key_type, args.ttl.as_deref()).await?;
    let ca_pem = request::fetch_bundle(&client).await?;
    let crls_pem = match args.crl {
        true => Some(request::fetch_crls(&client).await?),
        false => None,
    };
    let dir = files::CertDir::new(&args.out);
    write_issued(&dir, &issued, key_pem, ca_pem, crls_pem)
}

async fn renew(args: RenewArgs) -> anyhow::Result<()> {
    use crate::client::{files, request};
    let dir = files::CertDir::new(&args.out);
    let current = dir.read()?.with_context(|| {
        format!(
            "{} holds no certificate to renew; get one with sigil request",
            args.out.display()
        )
    })?;
    let client = crate::client::client_for_dir(&args.ca, &current.ca_pem).await?;
    let (issued, key_pem) =
        request::renew(&client, &current, args.key_type, args.ttl.as_deref()).await?;
    // The bundle and CRLs are refreshed on the way; if that fails the renewal still counts.
    let ca_pem = request::fetch_bundle(&client)
        .await
        .unwrap_or(current.ca_pem);
    let crls_pem = match current.crls_pem {
        Some(old) => Some(request::fetch_crls(&client).await.unwrap_or(old)),
        None => None,
    };
    write_issued(&dir, &issued, key_pem, ca_pem, crls_pem)
}

async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let poll_interval =
        crate::names::parse_duration(&args.poll_interval).map_err(|e| anyhow::anyhow!(e.detail))?;
    crate::client::agent::run(crate::client::agent::AgentConfig {
        ca: args.ca,
        dir: crate::client::files::CertDir::new(&args.out),
        token_file: args.token_file,
        exec: args.exec,
        pid_file: args.pid_file,
        signal: args.signal,
        crl: args.crl,
        ttl: args.ttl,
        key_type: args.key_type,
        sans: parse_sans(&args.sans)?,
        poll_interval,
    })
    .await
}
