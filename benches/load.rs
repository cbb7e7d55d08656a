//! Load benchmark: how fast one `sigil serve` issues, renews and publishes, next to what
//! limits it.
//!
//! It starts the real release binary on 127.0.0.1:0 against SQLite or a throwaway PostgreSQL
//! cluster (fsync on), and drives it over real TLS from many concurrent clients, each with its
//! own connection. Every issuance carries its own one-time token and a fresh CSR, all made
//! before the timed phase. In the same run it measures the in-process ceiling: how many
//! (verify CSR + verify token + sign certificate) one core does per second with the same keys.
//!
//! Run: `cargo bench --bench load -- [--backend sqlite,postgres] [--concurrency 1,8,32,128]
//! [--requests N] [--seconds S] [--quick]`. docs/benchmarks.md explains the figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};
use sigil::authority::VerifiedCsr;
use sigil::ca::{Ca, CaFiles, LeafTemplate};
use sigil::client::CaClient;
use sigil::names::{Identity, San};
use sigil::token::{self, Claims, Expectations, SigningKey, VerifyingKey};
use time::OffsetDateTime;

const BIN: &str = env!("CARGO_BIN_EXE_sigil");
/// Audience and provisioner the server's built-in policy honours for admin-made tokens.
const AUDIENCE: &str = "sigil";
const ISSUER: &str = "admin";
/// Token lifetime: the server caps lifetimes at one hour from `iat`, and tokens are made
/// before the timed phases, so they must outlive a whole backend's run.
const TOKEN_LIFETIME_SECS: i64 = 3000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Sqlite,
    Postgres,
}

impl BackendArg {
    fn name(self) -> &'static str {
        match self {
            BackendArg::Sqlite => "sqlite",
            BackendArg::Postgres => "postgres",
        }
    }
}

/// Arguments after `cargo bench --bench load --`.
#[derive(Parser, Debug)]
#[command(name = "load", about = "Load benchmark of sigil serve")]
struct Args {
    /// Backends to run, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backend: Vec<BackendArg>,
    /// Concurrency levels (clients, one TLS connection each), comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
    concurrency: Vec<usize>,
    /// Most requests per issuance or renewal phase
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Longest time per issuance or renewal phase, in seconds
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Most requests per GET phase (CRL, bundle)
    #[arg(long, default_value_t = 60_000)]
    get_requests: usize,
    /// Longest time per GET phase, in seconds
    #[arg(long, default_value_t = 3)]
    get_seconds: u64,
    /// Distinct service identities the requests are spread over
    #[arg(long, default_value_t = 256)]
    services: usize,
    /// Shorter phases (500 requests, 5 s; GET phases 1 s): a smoke run in about a minute
    #[arg(long)]
    quick: bool,
    /// Skip the GET phases
    #[arg(long)]
    no_get: bool,
    /// Log filter of the server (SIGIL_LOG); `info` logs every issuance, as in production
    #[arg(long, default_value = "info")]
    server_log: String,
    /// Extra flag for `sigil serve` (repeatable), such as --serve-arg=--db-max-connections=32
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// The sigil binary to run, to compare builds [default: the one cargo built with this]
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Keep the server's data directory and log (path printed at the end)
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.requests = args.requests.min(500);
        args.seconds = args.seconds.min(5);
        args.get_requests = args.get_requests.min(20_000);
        args.get_seconds = 1;
    }
    // The load generator gets as many worker threads as the machine has cores; it shares them
    // with the server, as a co-located client would.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "sigil load benchmark: {cores} cores shared by load generator and server; \
         concurrency {:?}; up to {} requests or {} s per phase",
        args.concurrency, args.requests, args.seconds
    );
    // Other work on the machine takes cores from both sides; the load average says how much.
    println!("load average at start: {}", load_average());
    let mut summary = Vec::new();
    for (i, backend) in args.backend.iter().enumerate() {
        // GET answers come from memory and do not touch the database: measured once.
        let with_get = i == 0 && !args.no_get;
        summary.extend(bench_backend(&args, *backend, with_get).await?);
    }
    println!("\nsummary (load average at end: {})", load_average());
    print_header();
    for row in &summary {
        row.print();
    }
    Ok(())
}

// --- one backend ----------------------------------------------------------------------------

async fn bench_backend(args: &Args, backend: BackendArg, with_get: bool) -> Result<Vec<Row>> {
    println!("\n=== backend {} ===", backend.name());
    let work = tempfile::Builder::new().prefix("sigil-bench-").tempdir()?;
    let cluster = match backend {
        BackendArg::Sqlite => None,
        BackendArg::Postgres => Some(PgCluster::start(work.path())?),
    };
    let data_dir = work.path().join("data");
    let database_url = match &cluster {
        Some(c) => c.url.clone(),
        None => sigil::config::default_database_url(&data_dir),
    };
    let mut server = ServerProcess::start(
        args.server_bin.as_deref().unwrap_or(Path::new(BIN)),
        work.path(),
        &data_dir,
        &database_url,
        &args.server_log,
        &args.serve_arg,
    )
    .await?;
    server.db_pid = cluster.as_ref().map(|c| c.pid);
    let result = drive(args, backend, &server, with_get).await;
    server.stop();
    if let Some(c) = cluster {
        c.stop();
    }
    if args.keep {
        let kept = work.keep();
        println!("kept {}", kept.display());
    }
    result
}

async fn drive(
    args: &Args,
    backend: BackendArg,
    server: &ServerProcess,
    with_get: bool,
) -> Result<Vec<Row>> {
    let root_pem = std::fs::read_to_string(server.data_dir.join("root.crt"))?;
    let key_pem =
        sigil::ca::keyfile::read_secret(&CaFiles::new(&server.data_dir).provisioner_key())?;
    let provisioner =
        SigningKey::from_pkcs8_pem(&key_pem).map_err(|e| anyhow::anyhow!(e.detail))?;
    let base = CaClient::with_root(&server.url, root_pem, None)?;

    let probe = CeilingProbe::new(&server.data_dir, &provisioner)?;
    let ceiling = probe.measure(Duration::from_secs(3))?;
    println!(
        "in-process ceiling, one core: {:.0} issuances per CPU second \
         (verify CSR {:.0} µs + verify token {:.0} µs + sign {:.0} µs); \
         {:.0}/s of wall time with {:.0}% of a core",
        ceiling.per_sec,
        ceiling.csr_us,
        ceiling.token_us,
        ceiling.sign_us,
        ceiling.wall_per_sec,
        ceiling.cpu_share * 100.0
    );

    let mut rows = Vec::new();
    print_header();
    let services = args.services.max(1);
    for &c in &args.concurrency {
        let n = args.requests;
        let work = prepare_issuance(&provisioner, n, services)?;
        let clients = connect(c, |_| fresh(&base)).await?;
        let phase = Phase {
            backend,
            name: "issue",
            concurrency: c,
            max: n,
            time: Duration::from_secs(args.seconds),
        };
        let work = Arc::new(work);
        // The machine's speed drifts with what else runs on it, so the ceiling this phase is
        // compared with is measured just before and just after it.
        let before = probe.measure(PHASE_PROBE)?;
        let row = phase
            .run(server, clients, {
                let work = work.clone();
                move |client: Arc<CaClient>, i| {
                    let work = work.clone();
                    async move {
                        let body = json!({ "csr": work[i].csr, "token": work[i].token });
                        client
                            .call::<Value>(Method::POST, "/v1/sign", None, Some(body))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }
                }
            })
            .await;
        let after = probe.measure(PHASE_PROBE)?;
        let row = row.with_ceiling((before.per_sec + after.per_sec) / 2.0);
        row.print();
        rows.push(row);
    }

    // Renewal: a certificate renews once, so every request presents a certificate of its own
    // over a new mTLS connection, as a fleet of agents renewing would: each renewal pays a
    // TLS handshake with client certificate verification.
    for &c in &args.concurrency {
        let n = args.requests;
        let identities = Arc::new(issue_identities(&base, &provisioner, n, services).await?);
        let csrs = Arc::new(prepare_csrs(n)?);
        let clients = connect(c, |_| fresh(&base)).await?;
        let phase = Phase {
            backend,
            name: "renew",
            concurrency: c,
            max: n,
            time: Duration::from_secs(args.seconds),
        };
        let base = base.clone();
        let row = phase
            .run(server, clients, move |_: Arc<CaClient>, i| {
                let (csrs, identities, base) = (csrs.clone(), identities.clone(), base.clone());
                async move {
                    let (chain, key) = &identities[i];
                    let client = base.with_identity(chain, key).map_err(|e| e.to_string())?;
                    let body = json!({ "csr": csrs[i] });
                    client
                        .call::<Value>(Method::POST, "/v1/renew", None, Some(body))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            })
            .await;
        row.print();
        rows.push(row);
    }

    if with_get {
        rows.extend(get_phases(args, backend, server, &base).await?);
    }
    Ok(rows)
}

async fn get_phases(
    args: &Args,
    backend: BackendArg,
    server: &ServerProcess,
    base: &CaClient,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (path, name200, name304) in [
        ("/v1/crl", "crl 200", "crl 304"),
        ("/v1/bundle", "bundle 200", "bundle 304"),
    ] {
        let etag = match base.get_document(path, None).await? {
            Some((_, Some(etag))) => etag,
            _ => bail!("GET {path} answered without an ETag"),
        };
        for (name, etag) in [(name200, None), (name304, Some(etag))] {
            for &c in &args.concurrency {
                let clients = connect(c, |_| fresh(base)).await?;
                let phase = Phase {
                    backend,
                    name,
                    concurrency: c,
                    max: args.get_requests,
                    time: Duration::from_secs(args.get_seconds),
                };
                let etag = etag.clone();
                let row = phase
                    .run(server, clients, move |client: Arc<CaClient>, _| {
                        let etag = etag.clone();
                        async move {
                            let got = client
                                .get_document(path, etag.as_deref())
                                .await
                                .map_err(|e| e.to_string())?;
                            match (etag.is_some(), got.is_some()) {
                                (true, false) | (false, true) => Ok(()),
                                (true, true) => Err("expected 304, got a body".to_string()),
                                (false, false) => Err("expected 200, got 304".to_string()),
                            }
                        }
                    })
                    .await;
                row.print();
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

/// One client per concurrent worker, each with its own TLS connection, opened (handshake
/// done) before the timed phase.
async fn connect(n: usize, make: impl Fn(usize) -> Result<CaClient>) -> Result<Vec<Arc<CaClient>>> {
    let clients = (0..n)
        .map(|k| make(k).map(Arc::new))
        .collect::<Result<Vec<_>>>()?;
    for c in &clients {
        let resp = c
            .http()
            .get(format!("{}/healthz", c.base()))
            .send()
            .await
            .context("opening a connection")?;
        if !resp.status().is_success() {
            bail!("GET /healthz answered {}", resp.status());
        }
    }
    Ok(clients)
}

/// A client of the same CA and root with a connection pool of its own.
fn fresh(base: &CaClient) -> Result<CaClient> {
    CaClient::with_root(base.base(), base.root_pem.clone(), None)
}

// --- request material, made before the timed phases ---------------------------------------

struct SignWork {
    csr: String,
    token: String,
}

fn service(i: usize, services: usize) -> (String, String) {
    let s = format!("svc-{:04}", i % services);
    let san = format!("{s}.bench.internal");
    (s, san)
}

/// A fresh P-256 key and a CSR naming `san`: (CSR PEM, key PEM).
fn csr(san: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let csr = rcgen::CertificateParams::new(vec![san.to_owned()])?.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

fn mint(key: &SigningKey, service: &str, san: &str, now: i64) -> Result<String> {
    let claims = Claims {
        iss: ISSUER.into(),
        sub: service.into(),
        sans: vec![san.into()],
        aud: vec![AUDIENCE.into()],
        iat: now,
        nbf: now,
        exp: now + TOKEN_LIFETIME_SECS,
        jti: token::new_jti().map_err(|e| anyhow::anyhow!(e.detail))?,
    };
    token::mint(key, &claims).map_err(|e| anyhow::anyhow!(e.detail))
}

/// Makes `n` items on every core; the order of items does not matter.
fn parallel<T: Send>(n: usize, make: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks: Vec<Result<Vec<T>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let make = &make;
                s.spawn(move || (t..n).step_by(threads).map(make).collect())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a preparation thread panicked"))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(n);
    for c in chunks {
        out.extend(c?);
    }
    Ok(out)
}

fn prepare_issuance(key: &SigningKey, n: usize, services: usize) -> Result<Vec<SignWork>> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    parallel(n, |i| {
        let (service, san) = service(i, services);
        Ok(SignWork {
            csr: csr(&san)?.0,
            token: mint(key, &service, &san, now)?,
        })
    })
}

fn prepare_csrs(n: usize) -> Result<Vec<String>> {
    // Renewal keeps the names of the presented certificate; a CSR without names asks for
    // exactly those.
    parallel(n, |_| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
        Ok(csr.pem()?)
    })
}

/// Issues one certificate per renewal client: (chain PEM, key PEM).
async fn issue_identities(
    base: &CaClient,
    key: &SigningKey,
    n: usize,
    services: usize,
) -> Result<Vec<(String, String)>> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (service, san) = service(i, services);
        let (csr, key_pem) = csr(&san)?;
        let token = mint(key, &service, &san, now)?;
        let issued: Value = base
            .call(
                Method::POST,
                "/v1/sign",
                None,
                Some(json!({ "csr": csr, "token": token })),
            )
            .await?;
        let chain = issued["chain"]
            .as_str()
            .context("the sign answer has no chain")?;
        out.push((chain.to_owned(), key_pem));
    }
    Ok(out)
}

// --- in-process ceiling ---------------------------------------------------------------------

struct Ceiling {
    /// Issuances per second of this thread's CPU time: what one core does when it has nothing
    /// else to run, whatever else the machine is doing.
    per_sec: f64,
    /// Issuances per second of wall time, and the share of a core this thread got meanwhile.
    wall_per_sec: f64,
    cpu_share: f64,
    csr_us: f64,
    token_us: f64,
    sign_us: f64,
}

/// How long the ceiling is measured before and after each issuance phase.
const PHASE_PROBE: Duration = Duration::from_millis(500);

/// Times verify CSR + verify token + sign certificate on this thread, with the server's own CA
/// keys and provisioner key, through the functions the server runs.
struct CeilingProbe {
    ca: Ca,
    vk: VerifyingKey,
    work: Vec<SignWork>,
    now: OffsetDateTime,
}

impl CeilingProbe {
    fn new(data_dir: &Path, provisioner: &SigningKey) -> Result<Self> {
        Ok(CeilingProbe {
            ca: Ca::load(&CaFiles::new(data_dir))?,
            vk: provisioner.verifying_key(),
            work: prepare_issuance(provisioner, 2000, 256)?,
            now: OffsetDateTime::now_utc(),
        })
    }

    /// Runs the three steps over the prepared requests, again from the first if need be,
    /// until `budget` of wall time has passed.
    fn measure(&self, budget: Duration) -> Result<Ceiling> {
        let now = self.now;
        let expect = Expectations {
            audience: AUDIENCE,
            now: now.unix_timestamp(),
            max_lifetime_secs: 3600,
        };
        let err = |e: sigil::error::Error| anyhow::anyhow!(e.detail);
        let (mut t_csr, mut t_token, mut t_sign) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut done = 0;
        let cpu0 = thread_cpu_seconds()?;
        let started = Instant::now();
        for w in self.work.iter().cycle() {
            let t0 = Instant::now();
            let csr = VerifiedCsr::from_pem(&w.csr).map_err(err)?;
            let t1 = Instant::now();
            let claims = token::parse(&w.token)
                .and_then(|u| u.verify(&self.vk, &expect))
                .map_err(err)?;
            let t2 = Instant::now();
            let identity = Identity::parse(&claims.sub).map_err(err)?;
            let sans: Vec<San> = claims
                .sans
                .iter()
                .map(|s| San::parse(s))
                .collect::<std::result::Result<_, _>>()
                .map_err(err)?;
            let leaf = self
                .ca
                .sign_leaf(&LeafTemplate {
                    identity,
                    sans,
                    spki_der: csr.spki_der.clone(),
                    key_kind: csr.key_kind,
                    not_before: now - sigil::ca::BACKDATE,
                    not_after: now + time::Duration::hours(24),
                    crl_url: "https://localhost:8443/v1/crl".into(),
                    server_auth: true,
                    client_auth: true,
                })
                .map_err(err)?;
            let t3 = Instant::now();
            std::hint::black_box(leaf);
            t_csr += t1 - t0;
            t_token += t2 - t1;
            t_sign += t3 - t2;
            done += 1;
            if started.elapsed() > budget {
                break;
            }
        }
        let wall = started.elapsed().as_secs_f64();
        let cpu = thread_cpu_seconds()? - cpu0;
        // The step times are wall times; scaled by the CPU share they add up to the CPU total.
        let share = cpu / wall;
        let us = |d: Duration| d.as_secs_f64() * 1e6 * share / done as f64;
        Ok(Ceiling {
            per_sec: done as f64 / cpu,
            wall_per_sec: done as f64 / wall,
            cpu_share: share,
            csr_us: us(t_csr),
            token_us: us(t_token),
            sign_us: us(t_sign),
        })
    }
}

/// CPU time of the calling thread, in seconds, from the scheduler's nanosecond account.
fn thread_cpu_seconds() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    let ns: f64 = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("parsing /proc/thread-self/schedstat")?;
    Ok(ns / 1e9)
}

// --- phases and figures ---------------------------------------------------------------------

struct Phase {
    backend: BackendArg,
    name: &'static str,
    concurrency: usize,
    /// Most requests; the phase also ends at `time`.
    max: usize,
    time: Duration,
}

/// What one phase measured.
struct Row {
    backend: &'static str,
    name: &'static str,
    concurrency: usize,
    ok: usize,
    errors: usize,
    first_error: Option<String>,
    per_sec: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    max: Duration,
    /// CPU time per answered request, in µs: the server, the load generator, and the
    /// PostgreSQL cluster (all its processes) when there is one.
    server_us: f64,
    client_us: f64,
    db_us: Option<f64>,
    /// Server's peak resident memory so far (VmHWM), MiB.
    server_hwm_mib: f64,
    /// The one-core ceiling measured around this phase (issuances per CPU second), for
    /// issuance phases.
    ceiling: Option<f64>,
}

impl Row {
    fn with_ceiling(mut self, per_sec: f64) -> Self {
        self.ceiling = Some(per_sec);
        self
    }

    fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<8} {:<10} {:>4} {:>6} {:>4} {:>7.0} {:>7.2} {:>7.2} {:>8.2} {:>7.2} {:>5.0} {:>5.0} {:>5} {:>7.1} {:>6} {:>7}",
            self.backend,
            self.name,
            self.concurrency,
            self.ok,
            self.errors,
            self.per_sec,
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.server_us,
            self.client_us,
            self.db_us.map_or_else(|| "-".to_string(), |v| format!("{v:.0}")),
            self.server_hwm_mib,
            self.ceiling
                .map_or_else(|| "-".to_string(), |c| format!("{c:.0}")),
            self.ceiling.map_or_else(
                || "-".to_string(),
                |c| format!("{:.0}%", self.per_sec / c * 100.0)
            ),
        );
        if let Some(e) = &self.first_error {
            println!("         first error: {e}");
        }
    }
}

fn print_header() {
    println!(
        "{:<8} {:<10} {:>4} {:>6} {:>4} {:>7} {:>7} {:>7} {:>8} {:>7} {:>5} {:>5} {:>5} {:>7} {:>6} {:>7}",
        "backend",
        "phase",
        "conc",
        "ok",
        "err",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "srv µs",
        "gen µs",
        "db µs",
        "srv MiB",
        "ceil/s",
        "ceiling"
    );
}

impl Phase {
    /// Runs `request(client, index)` from one worker per client until `max` requests have
    /// been sent or `time` has passed, whichever comes first.
    async fn run<F, Fut>(
        &self,
        server: &ServerProcess,
        clients: Vec<Arc<CaClient>>,
        request: F,
    ) -> Row
    where
        F: Fn(Arc<CaClient>, usize) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        let next = Arc::new(AtomicUsize::new(0));
        let first_error = Arc::new(Mutex::new(None::<String>));
        let deadline = Instant::now() + self.time;
        let cpu_now = || {
            (
                cpu_seconds(server.pid),
                cpu_seconds(std::process::id()),
                server.db_pid.map(tree_cpu_seconds),
            )
        };
        let cpu0 = cpu_now();
        let started = Instant::now();
        let mut workers = Vec::new();
        for client in clients {
            let (next, first_error, request, max) =
                (next.clone(), first_error.clone(), request.clone(), self.max);
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= max || Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    match request(client.clone(), i).await {
                        Ok(()) => latencies.push(t.elapsed()),
                        Err(e) => {
                            errors += 1;
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                }
                (latencies, errors)
            }));
        }
        let mut latencies = Vec::new();
        let mut errors = 0;
        for w in workers {
            match w.await {
                Ok((l, e)) => {
                    latencies.extend(l);
                    errors += e;
                }
                Err(e) => {
                    errors += 1;
                    if let Ok(mut f) = first_error.lock() {
                        f.get_or_insert(format!("worker failed: {e}"));
                    }
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu1 = cpu_now();
        let per_request = |seconds: f64| seconds * 1e6 / latencies.len().max(1) as f64;
        let server_us = per_request(cpu1.0 - cpu0.0);
        let client_us = per_request(cpu1.1 - cpu0.1);
        let db_us = cpu1.2.zip(cpu0.2).map(|(b, a)| per_request(b - a));
        latencies.sort();
        let pct = |p: f64| -> Duration {
            if latencies.is_empty() {
                return Duration::ZERO;
            }
            // Nearest rank: the smallest latency at or above which p of all requests lie.
            let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1]
        };
        let first_error = first_error.lock().ok().and_then(|f| f.clone());
        Row {
            backend: self.backend.name(),
            name: self.name,
            concurrency: self.concurrency,
            ok: latencies.len(),
            errors,
            first_error,
            per_sec: latencies.len() as f64 / elapsed,
            p50: pct(0.50),
            p99: pct(0.99),
            p999: pct(0.999),
            max: latencies.last().copied().unwrap_or_default(),
            server_us,
            client_us,
            db_us,
            server_hwm_mib: status_kib(server.pid, "VmHWM:") as f64 / 1024.0,
            ceiling: None,
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// User plus system CPU seconds a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    // Clock ticks per second; 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)).
    const TICKS: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / TICKS
}

/// CPU seconds of a process and its direct children, such as a postmaster and its backends.
fn tree_cpu_seconds(root: u32) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = cpu_seconds(root);
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let rest = s.rsplit_once(')')?.1.to_owned();
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if ppid == Some(root) {
            total += cpu_seconds(pid);
        }
    }
    total
}

/// A `kB` line of /proc/PID/status, such as VmHWM or VmRSS.
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// --- the server process ---------------------------------------------------------------------

struct ServerProcess {
    child: Option<Child>,
    pid: u32,
    /// The postmaster of the benchmark's PostgreSQL cluster, if any, for its CPU time.
    db_pid: Option<u32>,
    data_dir: PathBuf,
    url: String,
}

impl ServerProcess {
    async fn start(
        bin: &Path,
        work: &Path,
        data_dir: &Path,
        database_url: &str,
        log_filter: &str,
        extra: &[String],
    ) -> Result<Self> {
        let addr_file = work.join("addr");
        let log_path = work.join("serve.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--addr-file")
            .arg(&addr_file)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--database-url")
            .arg(database_url)
            .args(extra)
            .env("SIGIL_LOG", log_filter)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sigil serve")?;
        let mut s = ServerProcess {
            pid: child.id(),
            db_pid: None,
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.trim().is_empty() {
                    s.url = format!("https://{}", a.trim());
                    break;
                }
            }
            let exited = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                s.stop();
                bail!(
                    "sigil serve did not start:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("server pid {} at {}", s.pid, s.url);
        Ok(s)
    }

    /// Stops the server by its PID: SIGTERM, then SIGKILL if it has not exited in 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// --- a throwaway PostgreSQL cluster, fsync on ----------------------------------------------

/// A PostgreSQL cluster under the benchmark's temporary directory, with the durability
/// settings a production server has (fsync and synchronous_commit on, the defaults).
struct PgCluster {
    root: PathBuf,
    pid: u32,
    url: String,
    /// Stops the cluster if this process dies without doing so.
    watcher: Option<Child>,
}

fn pg_bin(tool: &str) -> PathBuf {
    ["17", "16", "15"]
        .iter()
        .map(|v| {
            Path::new("/usr/lib/postgresql")
                .join(v)
                .join("bin")
                .join(tool)
        })
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(tool))
}

fn as_postgres(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .context("running runuser")?;
    if !out.status.success() {
        bail!(
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl PgCluster {
    fn start(work: &Path) -> Result<Self> {
        let root = work.join("pg");
        std::fs::create_dir_all(root.join("sock"))?;
        // initdb refuses root; the cluster belongs to the postgres user, who must be able to
        // reach it through the temporary directory.
        let status = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(work)
            .status()?;
        if !status.success() {
            bail!("chown of {} to postgres failed", work.display());
        }
        let data = root.join("data");
        as_postgres(&[
            pg_bin("initdb").as_os_str(),
            "-D".as_ref(),
            data.as_os_str(),
            "-U".as_ref(),
            "postgres".as_ref(),
            "--auth=trust".as_ref(),
            "--no-locale".as_ref(),
            "-E".as_ref(),
            "UTF8".as_ref(),
        ])?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1",
            root.join("sock").display()
        );
        as_postgres(&[
            pg_bin("pg_ctl").as_os_str(),
            "-D".as_ref(),
            data.as_os_str(),
            "-l".as_ref(),
            root.join("log").as_os_str(),
            "-w".as_ref(),
            "-t".as_ref(),
            "30".as_ref(),
            "-o".as_ref(),
            opts.as_ref(),
            "start".as_ref(),
        ])?;
        let pid_text = std::fs::read_to_string(data.join("postmaster.pid"))?;
        let pid: u32 = pid_text
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .context("reading the postmaster PID")?;
        // If this process is killed, stop the cluster anyway (fast shutdown, by its PID).
        let watcher = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -INT {pid} 2>/dev/null",
                me = std::process::id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        println!("postgresql pid {pid} on port {port} (fsync on)");
        Ok(PgCluster {
            root,
            pid,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            watcher,
        })
    }

    /// Fast shutdown by the postmaster's PID, then waits for it to exit.
    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.pid == 0 {
            return;
        }
        if let Some(mut w) = self.watcher.take() {
            signal(w.id(), "TERM");
            let _ = w.wait();
        }
        signal(self.pid, "INT");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.pid = 0;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}
