//! Test harness: starts the real `sigil` binary on 127.0.0.1:0 over TLS, against SQLite or a
//! throwaway PostgreSQL cluster, and talks to it with the real client.
//!
//! PostgreSQL: `SIGIL_TEST_POSTGRES_URL` names a server to use (each test gets its own
//! database in it); without it, the harness starts a cluster of its own once per test binary,
//! under a temporary directory, and a watcher process stops it when the test binary exits.
//! A test that asks for PostgreSQL fails, never skips, when no cluster can be had.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sigil::client::CaClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_sigil");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const BACKENDS: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

/// A running CA process.
pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub addr: String,
    pub url: String,
    pub database_url: String,
    pub extra_args: Vec<String>,
    /// Environment variables set for the process, on top of the test's own.
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Server {
    pub async fn start(backend: Backend) -> Server {
        Self::start_with(backend, &[]).await
    }

    /// Starts a CA with extra `serve` flags.
    pub async fn start_with(backend: Backend, extra: &[&str]) -> Server {
        Self::start_configured(backend, extra, &[], None).await
    }

    /// Starts a CA with extra `serve` flags, extra environment variables, and a `sigil.toml`
    /// written into the data directory before the first start.
    pub async fn start_configured(
        backend: Backend,
        extra: &[&str],
        env: &[(&str, &str)],
        config_toml: Option<&str>,
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        let database_url = match backend {
            Backend::Sqlite => sigil::config::default_database_url(&data_dir),
            Backend::Postgres => postgres_database().await,
        };
        if let Some(text) = config_toml {
            std::fs::create_dir_all(&data_dir).expect("data dir");
            std::fs::write(data_dir.join("sigil.toml"), text).expect("sigil.toml");
        }
        Self::launch(dir, data_dir, database_url, extra, env).await
    }

    /// Starts a CA on a database of the caller's choosing, such as one in a [`PgCluster`].
    pub async fn start_on(database_url: &str, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = dir.path().join("data");
        Self::launch(dir, data_dir, database_url.to_owned(), extra, &[]).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        database_url: String,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let mut s = Server {
            child: None,
            log: dir.path().join("serve.log"),
            dir,
            data_dir,
            addr: String::new(),
            url: String::new(),
            database_url,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.spawn("127.0.0.1:0").await;
        s
    }

    /// Starts another replica sharing this one's data directory and database.
    pub async fn replica(&self) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Server {
            child: None,
            log: dir.path().join("serve.log"),
            dir,
            data_dir: self.data_dir.clone(),
            addr: String::new(),
            url: String::new(),
            database_url: self.database_url.clone(),
            extra_args: self.extra_args.clone(),
            env: self.env.clone(),
        };
        s.spawn("127.0.0.1:0").await;
        s
    }

    async fn spawn(&mut self, listen: &str) {
        let addr_file = self.dir.path().join(format!("addr-{}", rand_suffix()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(listen)
            .arg("--database-url")
            .arg(&self.database_url)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(&self.extra_args)
            .env("SIGIL_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("starting sigil serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.is_empty() {
                    self.addr = a.trim().to_owned();
                    break;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("sigil serve exited with {status}:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "sigil serve did not start:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.url = format!("https://{}", self.addr);
    }

    /// Restarts the process on the same port, data and database.
    pub async fn restart(&mut self) {
        self.stop();
        let addr = self.addr.clone();
        self.spawn(&addr).await;
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("root.crt")).expect("root.crt")
    }

    pub fn root_path(&self) -> PathBuf {
        self.data_dir.join("root.crt")
    }

    pub fn admin_key_path(&self) -> PathBuf {
        self.data_dir.join("admin.key")
    }

    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.admin_key_path())
            .expect("admin.key")
            .trim()
            .to_owned()
    }

    pub fn client(&self) -> CaClient {
        CaClient::with_root(&self.url, self.root_pem(), None).expect("client")
    }

    /// A plain reqwest client trusting the root, for raw requests.
    pub fn http(&self) -> reqwest::Client {
        self.client().http().clone()
    }

    /// GETs `path`, asserts the answer is 200, and returns its body.
    pub async fn get_ok(&self, path: &str) -> Vec<u8> {
        let resp = self
            .http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.bytes().await.unwrap().to_vec()
    }

    /// [`Server::get_ok`] for a text body.
    pub async fn get_text(&self, path: &str) -> String {
        String::from_utf8(self.get_ok(path).await).expect("a text body")
    }

    /// The admin API's record of a certificate.
    pub async fn record(&self, serial: &str) -> serde_json::Value {
        let resp = self
            .http()
            .get(format!("{}/v1/admin/certificates/{serial}", self.url))
            .bearer_auth(self.admin_key())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "record of {serial}");
        resp.json().await.unwrap()
    }

    /// POSTs `/v1/sign` with a CSR, a token and, if given, a TTL; returns the status and the
    /// JSON body (null if the body is not JSON).
    pub async fn sign(
        &self,
        csr: &str,
        token: &str,
        ttl: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut body = serde_json::json!({ "csr": csr, "token": token });
        if let Some(t) = ttl {
            body["ttl"] = serde_json::json!(t);
        }
        let resp = self
            .http()
            .post(format!("{}/v1/sign", self.url))
            .json(&body)
            .send()
            .await
            .expect("sign request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Gets a token through the admin API.
    pub async fn token(&self, service: &str, sans: &[&str]) -> String {
        let resp = self
            .http()
            .post(format!("{}/v1/admin/tokens", self.url))
            .bearer_auth(self.admin_key())
            .json(&serde_json::json!({ "service": service, "sans": sans }))
            .send()
            .await
            .expect("token request");
        assert_eq!(resp.status(), 201, "token creation failed");
        let v: serde_json::Value = resp.json().await.expect("token json");
        v["token"].as_str().expect("token").to_owned()
    }

    /// Mints a token offline with the built-in provisioner's key, as a token made before a
    /// change of state (an identity disabled since) would be.
    pub fn offline_token(&self, service: &str, sans: &[&str]) -> String {
        let pem = std::fs::read_to_string(self.data_dir.join("provisioner.key")).expect("key");
        let key = sigil::token::SigningKey::from_pkcs8_pem(&pem).expect("provisioner key");
        let now = sigil::authority::now_secs();
        let claims = sigil::token::Claims {
            iss: "admin".into(),
            sub: service.into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            aud: vec!["sigil".into()],
            iat: now,
            nbf: now,
            exp: now + 600,
            jti: sigil::token::new_jti().expect("jti"),
        };
        sigil::token::mint(&key, &claims).expect("mint")
    }

    /// Counts rows of a table through the `sqlite3`-free path: a direct sqlx connection.
    pub async fn count(&self, table: &str) -> i64 {
        use sqlx::Row;
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&self.database_url)
            .await
            .expect("db");
        sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(&mut conn)
            .await
            .expect("count")
            .try_get::<i64, _>("n")
            .expect("n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }
}

/// Sends SIGTERM to `child` and waits up to 10 s for it to exit, then kills it. Returns
/// whether it exited successfully within that time.
pub fn terminate(mut child: Child) -> bool {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rand_suffix() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 6];
    ring::rand::SystemRandom::new().fill(&mut b).expect("rng");
    hex::encode(b)
}

/// A PEM CSR and its key, made with rcgen.
pub fn rcgen_csr(alg: &'static rcgen::SignatureAlgorithm, sans: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(alg).expect("key");
    let params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
    let csr = params.serialize_request(&key).expect("csr");
    (csr.pem().expect("pem"), key.serialize_pem())
}

/// Makes a key and CSR with the openssl CLI. `key_args` are `openssl req -newkey` values.
pub fn openssl_csr(
    dir: &Path,
    name: &str,
    newkey: &str,
    extra: &[&str],
    sans: &[&str],
) -> (String, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-new", "-nodes", "-newkey", newkey])
        .args(extra)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr);
    cmd.args(["-subj", &format!("/CN={name}")]);
    if !sans.is_empty() {
        let list: Vec<String> = sans
            .iter()
            .map(|s| {
                if s.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{s}")
                } else {
                    format!("DNS:{s}")
                }
            })
            .collect();
        cmd.args(["-addext", &format!("subjectAltName={}", list.join(","))]);
    }
    let out = cmd.stderr(Stdio::piped()).output().expect("openssl req");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (std::fs::read_to_string(&csr).expect("csr"), key)
}

/// Runs a command and returns (success, stdout + stderr).
/// Runs `cmd` to completion: whether it succeeded, its standard output, its standard error.
pub fn run_split(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("running command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_split`] with standard output and standard error in one text.
pub fn run(cmd: &mut Command) -> (bool, String) {
    let (ok, out, err) = run_split(cmd);
    (ok, out + &err)
}

// --- PostgreSQL -----------------------------------------------------------------------------

struct Cluster {
    url: String,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The base URL of a PostgreSQL server for tests, starting a throwaway one if needed.
pub fn postgres_base_url() -> String {
    if let Ok(url) = std::env::var("SIGIL_TEST_POSTGRES_URL") {
        return url;
    }
    let cluster = CLUSTER.get_or_init(start_cluster);
    match cluster {
        Ok(c) => c.url.clone(),
        Err(e) => panic!("PostgreSQL tests need a server and none could be started: {e}"),
    }
}

/// A fresh database for one test, in the test PostgreSQL server.
pub async fn postgres_database() -> String {
    create_database(&postgres_base_url()).await
}

/// A fresh database in the PostgreSQL server at `base`; returns its URL.
pub async fn create_database(base: &str) -> String {
    use sqlx::Connection;
    let name = format!("sigil_test_{}", rand_suffix());
    let mut conn = sqlx::PgConnection::connect(base)
        .await
        .expect("connecting to test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("database URL has a path");
    format!("{prefix}/{name}")
}

fn pg_bin(tool: &str) -> PathBuf {
    for dir in [
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
    ] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(tool)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_cluster() -> Result<Cluster, String> {
    // The shared cluster lives as long as the test binary: it is never dropped, and the
    // watcher that `PgCluster::create` starts stops it when the binary exits.
    let cluster = PgCluster::create(&["-c", "fsync=off"])?;
    let url = cluster.url.clone();
    std::mem::forget(cluster);
    Ok(Cluster { url })
}

/// A PostgreSQL cluster of one test's own, which the test may stop and start again (to
/// take the database away under load). It keeps its port across restarts, and is stopped
/// and removed when dropped or, failing that, when the test binary exits.
pub struct PgCluster {
    pub url: String,
    root: PathBuf,
    data: PathBuf,
    opts: String,
}

fn as_postgres(args: &[&str]) -> Result<(), String> {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl PgCluster {
    /// Makes and starts a cluster on a free loopback port. `server_opts` are extra `postgres`
    /// options such as `["-c", "fsync=off"]`.
    pub fn create(server_opts: &[&str]) -> Result<PgCluster, String> {
        let root = std::env::temp_dir().join(format!("sigil-pg-{}", rand_suffix()));
        std::fs::create_dir_all(root.join("sock")).map_err(|e| e.to_string())?;
        Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&root)
            .status()
            .map_err(|e| e.to_string())?;
        let data = root.join("data");
        let initdb = pg_bin("initdb");
        as_postgres(&[
            initdb.to_str().unwrap_or("initdb"),
            "-D",
            data.to_str().unwrap_or_default(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
        ])?;
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 {}",
            root.join("sock").display(),
            server_opts.join(" ")
        );
        let cluster = PgCluster {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            root,
            data,
            opts,
        };
        cluster.start()?;
        // Stop the cluster when this test binary exits, however it exits.
        let watcher = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             runuser -u postgres -- {pg_ctl} -D {data} -m immediate -w stop >/dev/null 2>&1; \
             rm -rf {root}",
            pid = std::process::id(),
            pg_ctl = pg_bin("pg_ctl").display(),
            data = cluster.data.display(),
            root = cluster.root.display(),
        );
        Command::new("sh")
            .args(["-c", &watcher])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok(cluster)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) -> Result<(), String> {
        let pg_ctl = pg_bin("pg_ctl");
        as_postgres(&[
            pg_ctl.to_str().unwrap_or("pg_ctl"),
            "-D",
            self.data.to_str().unwrap_or_default(),
            "-l",
            self.root.join("log").to_str().unwrap_or_default(),
            "-w",
            "-t",
            "30",
            "-o",
            &self.opts,
            "start",
        ])
    }

    /// Stops the server the way an operator does (`pg_ctl stop -m fast`): open transactions
    /// are rolled back and every session is terminated.
    pub fn stop(&self) -> Result<(), String> {
        let pg_ctl = pg_bin("pg_ctl");
        as_postgres(&[
            pg_ctl.to_str().unwrap_or("pg_ctl"),
            "-D",
            self.data.to_str().unwrap_or_default(),
            "-m",
            "fast",
            "-w",
            "stop",
        ])
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Runs an async test function once per backend, as two test cases.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(super::common::Backend::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(super::common::Backend::Postgres).await
                }
            }
        )*
    };
}

/// Asserts that `resp` is the refusal a table of bad inputs expects: its status, a
/// problem+json body with that status and `code`, and a detail long enough to say what to fix.
/// `case` names the row in failure messages. Returns the body.
pub async fn assert_problem(
    case: &str,
    resp: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    let got = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(got, status, "{case}: {body}");
    assert_eq!(ctype, "application/problem+json", "{case}");
    assert_eq!(body["code"], code, "{case}: {body}");
    assert_eq!(body["status"], status, "{case}");
    assert!(
        body["detail"].as_str().is_some_and(|d| d.len() > 10),
        "{case}: detail must say what to fix"
    );
    body
}
