//! The client side end to end: `sigil request`, `sigil renew` and `sigil agent` run as real
//! processes against the real server over mTLS, and the files they leave checked with
//! x509-parser, rcgen and `openssl verify`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Server, BIN};
use serde_json::{json, Value};
use sigil::client::files::{CertDir, Material};
use sigil::client::{ClientError, Problem};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a test needs to know of the certificate in a directory.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    serial: String,
    sans: Vec<String>,
    spki: Vec<u8>,
    key_pem: String,
}

fn leaf_der(chain_pem: &str) -> Vec<u8> {
    sigil::pem::decode_all(chain_pem, "CERTIFICATE")
        .unwrap()
        .remove(0)
}

fn spki_of_cert(chain_pem: &str) -> Vec<u8> {
    let der = leaf_der(chain_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.public_key().raw.to_vec()
}

fn spki_of_key(key_pem: &str) -> Vec<u8> {
    rcgen::PublicKeyData::subject_public_key_info(&rcgen::KeyPair::from_pem(key_pem).unwrap())
}

/// Reads the directory and checks that its key belongs to its certificate.
fn held(dir: &Path) -> Held {
    let m = CertDir::new(dir)
        .read()
        .unwrap()
        .expect("a certificate in the directory");
    let der = leaf_der(&m.chain_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let spki = cert.public_key().raw.to_vec();
    assert_eq!(
        spki,
        spki_of_key(&m.key_pem),
        "key.pem does not match cert.pem"
    );
    let mut sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|n| n.to_string())
                .collect()
        })
        .unwrap_or_default();
    sans.sort();
    Held {
        serial: sigil::names::Serial::from_be_bytes(cert.raw_serial()).to_string(),
        sans,
        spki,
        key_pem: m.key_pem,
    }
}

fn sigil(args: &[&str]) -> (bool, String) {
    common::run(Command::new(BIN).args(args).env("SIGIL_LOG", "warn"))
}

fn write_token(path: &Path, token: &str) {
    sigil::ca::keyfile::write_atomic(path, token.as_bytes(), 0o600).unwrap();
}

/// `sigil request` into `dir` with a fresh token for `service`; returns what it wrote.
async fn request(s: &Server, dir: &Path, service: &str, sans: &[&str], extra: &[&str]) -> Held {
    let token_file = dir.with_extension("token");
    write_token(&token_file, &s.token(service, sans).await);
    let root = s.root_path();
    let mut args = vec![
        "request",
        "--ca",
        &s.url,
        "--root",
        root.to_str().unwrap(),
        "--token-file",
        token_file.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, out) = sigil(&args);
    assert!(ok, "sigil request failed: {out}");
    held(dir)
}

fn renew_cli(s: &Server, dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["renew", "--ca", &s.url, "--out", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    sigil(&args)
}

async fn admin(s: &Server, path: &str, body: Value) -> Value {
    let resp = s
        .http()
        .post(format!("{}{path}", s.url))
        .bearer_auth(s.admin_key())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.unwrap()
}

fn openssl_verify(dir: &Path) -> (bool, String) {
    let cert = dir.join("cert.pem");
    common::run(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(dir.join("ca.pem"))
            .arg("-untrusted")
            .arg(&cert)
            .arg(&cert),
    )
}

async fn request_then_renew_rotates_key_and_serial(backend: Backend) {
    let s = Server::start(backend).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("payments");
    let sans = ["api.payments.internal", "10.0.0.7"];
    let first = request(&s, &dir, "payments", &sans, &[]).await;
    assert_eq!(
        first.sans,
        ["DNSName(api.payments.internal)", "IPAddress(0a:00:00:07)"]
    );
    let (ok, out) = openssl_verify(&dir);
    assert!(ok, "openssl verify: {out}");
    let bundle = s
        .client()
        .get_document("/v1/bundle", None)
        .await
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), bundle);
    let chain = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf then intermediate"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Renew trusts the directory's ca.pem: no --root.
    let (ok, out) = renew_cli(&s, &dir, &[]);
    assert!(ok, "sigil renew failed: {out}");
    let second = held(&dir);
    assert_ne!(
        second.serial, first.serial,
        "renewal must give a new serial"
    );
    assert_ne!(second.spki, first.spki, "renewal must use a new key");
    assert_eq!(second.sans, first.sans, "renewal keeps the names");
    let (ok, out) = openssl_verify(&dir);
    assert!(ok, "openssl verify after renewal: {out}");

    // The record says where it came from, and the old certificate stays valid (not revoked).
    let rec = s.record(&second.serial).await;
    assert_eq!(rec["renewed_from"], first.serial.as_str(), "{rec}");
    assert_eq!(rec["identity"], "payments");
    assert_eq!(s.record(&first.serial).await["status"], "active");

    // Renewing again from the renewed certificate works too, and can change the key type.
    let (ok, out) = renew_cli(&s, &dir, &["--key-type", "p384", "--ttl", "2h"]);
    assert!(ok, "second renewal failed: {out}");
    let third = held(&dir);
    assert_ne!(third.serial, second.serial);
    assert_eq!(third.sans, first.sans);
    assert!(third.key_pem != second.key_pem);
    let rec = s.record(&third.serial).await;
    assert_eq!(rec["key_type"], "p384", "{rec}");
    assert_eq!(rec["renewed_from"], second.serial.as_str());
}

/// Every key type `sigil request` offers gives a certificate whose key matches.
async fn every_key_type_is_requested_and_renewed() {
    let s = Server::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    for key_type in ["p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096"] {
        let dir = work.path().join(key_type);
        let first = request(&s, &dir, "kt", &["kt.internal"], &["--key-type", key_type]).await;
        let rec = s.record(&first.serial).await;
        assert_eq!(rec["key_type"], key_type, "{rec}");
        let (ok, out) = renew_cli(&s, &dir, &[]);
        assert!(ok, "{key_type}: renew failed: {out}");
        let renewed = held(&dir);
        assert_eq!(
            s.record(&renewed.serial).await["key_type"],
            key_type,
            "renewal keeps the key type"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_types() {
    every_key_type_is_requested_and_renewed().await
}

/// A CSR for a fresh P-256 key asking for `sans`.
fn csr(sans: &[&str]) -> String {
    common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, sans).0
}

/// POSTs /v1/renew presenting the certificate in `dir` (when given) as TLS client certificate.
async fn renew_raw(s: &Server, dir: Option<&Path>, csr: &str) -> Result<Value, ClientError> {
    let client = match dir {
        Some(d) => {
            let m = CertDir::new(d).read().unwrap().unwrap();
            s.client().with_identity(&m.chain_pem, &m.key_pem).unwrap()
        }
        None => s.client(),
    };
    client
        .call(
            reqwest::Method::POST,
            "/v1/renew",
            None,
            Some(json!({ "csr": csr })),
        )
        .await
}

fn refusal(r: Result<Value, ClientError>) -> Problem {
    match r {
        Err(ClientError::Refused(p)) => p,
        Ok(v) => panic!("renewal should have been refused, got {v}"),
        Err(e) => panic!("renewal should have been refused with a problem, got {e}"),
    }
}

/// Waits until the served CRLs change from `before`, so that a test knows the revocation is
/// published (and, before renewal checked revocation only in the database, reached TLS).
async fn wait_for_crl_change(s: &Server, before: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = s
            .client()
            .get_document("/v1/crls.pem", None)
            .await
            .unwrap()
            .unwrap()
            .0;
        if now != before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CRL never listed the revocation"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn refused_renewals(backend: Backend) {
    let s = Server::start(backend).await;
    let work = tempfile::tempdir().unwrap();
    let good = work.path().join("good");
    let revoked = work.path().join("revoked");
    let disabled = work.path().join("disabled");
    let expired = work.path().join("expired");
    request(&s, &good, "payments", &["payments.internal"], &[]).await;
    let rev = request(&s, &revoked, "payments", &["payments.internal"], &[]).await;
    let dis = request(&s, &disabled, "ledger", &["ledger.internal"], &[]).await;
    request(
        &s,
        &expired,
        "payments",
        &["payments.internal"],
        &["--ttl", "1s"],
    )
    .await;

    let crls_before = s
        .client()
        .get_document("/v1/crls.pem", None)
        .await
        .unwrap()
        .unwrap()
        .0;
    admin(
        &s,
        &format!("/v1/admin/certificates/{}/revoke", rev.serial),
        json!({"reason": "keyCompromise"}),
    )
    .await;
    let disabled_answer = admin(&s, "/v1/admin/services/ledger/revoke", json!({})).await;
    assert_eq!(disabled_answer["revoked"], 1);
    assert_eq!(s.record(&dis.serial).await["status"], "revoked");
    wait_for_crl_change(&s, &crls_before).await;
    // The 1-second certificate is past its notAfter by now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let rows_before = s.count("certificates").await;

    struct Case<'a> {
        name: &'a str,
        dir: Option<&'a Path>,
        csr: String,
        status: u16,
        code: &'a str,
    }
    let cases = [
        Case {
            name: "no client certificate",
            dir: None,
            csr: csr(&[]),
            status: 401,
            code: "no-client-certificate",
        },
        Case {
            name: "a name the certificate does not have",
            dir: Some(&good),
            csr: csr(&["payments.internal", "admin.internal"]),
            status: 403,
            code: "name-not-in-certificate",
        },
        Case {
            name: "revoked certificate, also listed in the CRL",
            dir: Some(&revoked),
            csr: csr(&[]),
            status: 403,
            code: "certificate-revoked",
        },
        Case {
            name: "certificate of a disabled identity",
            dir: Some(&disabled),
            csr: csr(&[]),
            status: 403,
            code: "certificate-revoked",
        },
        Case {
            name: "expired certificate",
            dir: Some(&expired),
            csr: csr(&[]),
            status: 401,
            code: "certificate-expired",
        },
        Case {
            name: "CSR that is not a CSR",
            dir: Some(&good),
            csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                .into(),
            status: 400,
            code: "bad-csr",
        },
    ];
    for case in &cases {
        let p = refusal(renew_raw(&s, case.dir, &case.csr).await);
        assert_eq!(
            (p.status, p.code.as_str()),
            (case.status, case.code),
            "{}: {}",
            case.name,
            p.detail
        );
        assert!(
            p.detail.len() > 20,
            "{}: the detail must say what to do",
            case.name
        );
    }
    assert_eq!(
        s.count("certificates").await,
        rows_before,
        "a refused renewal wrote a row"
    );

    // The command line says so too, and leaves the files as they were.
    let before = held(&revoked);
    let (ok, out) = renew_cli(&s, &revoked, &[]);
    assert!(
        !ok && out.contains("403") && out.contains("revoked"),
        "{out}"
    );
    assert_eq!(held(&revoked), before);

    // A good certificate still renews, with names it has, after all that.
    let p = renew_raw(&s, Some(&good), &csr(&["payments.internal"]))
        .await
        .unwrap();
    assert!(p["serial"].is_string());
    assert!(!s.log_text().contains("panicked"));
}

// --- agent --------------------------------------------------------------------------------

/// A running `sigil agent`, stopped with SIGTERM when dropped.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

impl Agent {
    fn start(s: &Server, dir: &Path, token_file: &Path, extra: &[&str]) -> Agent {
        let log = dir.with_extension("agent.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .arg("agent")
            .args(["--ca", &s.url, "--root"])
            .arg(s.root_path())
            .arg("--out")
            .arg(dir)
            .arg("--token-file")
            .arg(token_file)
            .args(extra)
            .env("SIGIL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Agent {
            child: Some(child),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("the agent exited with {status}:\n{}", self.log_text());
        }
    }

    /// SIGTERM; returns whether it exited successfully within the deadline.
    fn stop(&mut self) -> bool {
        self.child.take().is_some_and(common::terminate)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the directory holds a certificate that `pred` accepts, checking the agent
/// stays up; panics with the agent's log at the deadline.
async fn wait_for(
    agent: &mut Agent,
    dir: &Path,
    secs: u64,
    what: &str,
    pred: impl Fn(&Held) -> bool,
) -> Held {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        agent.assert_running();
        if let Ok(Some(_)) = CertDir::new(dir).read() {
            let h = held(dir);
            if pred(&h) {
                return h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s; agent log:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads cert, key and cert again, as a workload would, until told to stop. Whenever both
/// certificate reads agree, the key must be that certificate's. Returns how many consistent
/// triples it saw and the mismatches.
fn poll_reader(
    dir: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<String>) {
    let mut seen = 0;
    let mut bad = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let read = |n: &str| std::fs::read_to_string(dir.join(n));
        let (Ok(c1), Ok(k), Ok(c2)) = (read("cert.pem"), read("key.pem"), read("cert.pem")) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if c1 == c2 {
            seen += 1;
            if spki_of_cert(&c1) != spki_of_key(&k) {
                bad.push(format!(
                    "key does not match certificate {}",
                    &c1[..80.min(c1.len())]
                ));
            }
        }
    }
    (seen, bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_renews_short_certificates_and_reloads_the_workload() {
    let s = Server::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("certs");
    let token_file = work.path().join("token");
    write_token(&token_file, &s.token("orders", &["orders.internal"]).await);

    // The workload: a shell that counts SIGHUPs.
    let hups = work.path().join("hups");
    let pid_file = work.path().join("workload.pid");
    let mut workload = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> {}' HUP; while :; do sleep 0.1; done",
            hups.display()
        ))
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, workload.id().to_string()).unwrap();
    let execs = work.path().join("execs");
    let exec = format!("echo \"$SIGIL_DIR\" >> {}", execs.display());

    let mut agent = Agent::start(
        &s,
        &dir,
        &token_file,
        &[
            "--ttl",
            "30s",
            "--crl",
            "--exec",
            &exec,
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let first = wait_for(&mut agent, &dir, 60, "first certificate", |_| true).await;
    assert!(dir.join("crls.pem").exists(), "--crl writes crls.pem");
    let (ok, out) = openssl_verify(&dir);
    assert!(ok, "{out}");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || poll_reader(dir, stop))
    };

    // Two renewals of a 30-second certificate: due about 20 s after each issuance.
    let second = wait_for(&mut agent, &dir, 60, "first renewal", |h| {
        h.serial != first.serial
    })
    .await;
    let third = wait_for(&mut agent, &dir, 60, "second renewal", |h| {
        h.serial != first.serial && h.serial != second.serial
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, bad) = reader.join().unwrap();
    assert!(bad.is_empty(), "the reader saw mismatched files: {bad:?}");
    assert!(seen > 0);
    for h in [&second, &third] {
        assert_eq!(h.sans, first.sans);
        assert_ne!(h.spki, first.spki);
        assert!(s.record(&h.serial).await["renewed_from"].is_string());
    }

    // Each change ran the hook and signalled the workload: first write and two renewals.
    let count = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(
        count(&execs) >= 3,
        "--exec ran {} times:\n{}",
        count(&execs),
        agent.log_text()
    );
    assert!(std::fs::read_to_string(&execs)
        .unwrap()
        .contains(dir.to_str().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&hups) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        count(&hups) >= 3,
        "the workload got {} SIGHUPs",
        count(&hups)
    );

    // Only the current and the previous generation stay on disk.
    let generations = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("..gen-")
        })
        .count();
    assert!(generations <= 2, "{generations} generations left");

    assert!(
        agent.stop(),
        "the agent must exit cleanly on SIGTERM:\n{}",
        agent.log_text()
    );
    let _ = workload.kill();
    let _ = workload.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_keeps_files_while_the_ca_is_down_and_recovers() {
    let mut s = Server::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("certs");
    let token_file = work.path().join("token");
    write_token(&token_file, &s.token("orders", &["orders.internal"]).await);
    // 60-second certificates: renewal is due after about 40 s, leaving about 20 s in which
    // the CA comes back before the certificate expires.
    let mut agent = Agent::start(
        &s,
        &dir,
        &token_file,
        &["--ttl", "60s", "--poll-interval", "2s"],
    );
    let first = wait_for(&mut agent, &dir, 60, "first certificate", |_| true).await;

    s.stop();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !agent.log_text().contains("getting a certificate failed") {
        agent.assert_running();
        assert!(
            Instant::now() < deadline,
            "no failed renewal logged:\n{}",
            agent.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        held(&dir),
        first,
        "the files stay as they were while the CA is away"
    );
    let (ok, out) = openssl_verify(&dir);
    assert!(ok, "the files must still be valid: {out}");

    s.restart().await;
    let renewed = wait_for(&mut agent, &dir, 30, "renewal after the CA returned", |h| {
        h.serial != first.serial
    })
    .await;
    assert_eq!(
        s.record(&renewed.serial).await["renewed_from"],
        first.serial.as_str()
    );
    let log = agent.log_text();
    assert!(log.contains("retry_in"), "{log}");
    assert!(agent.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_uses_a_fresh_token_when_its_certificate_is_revoked() {
    let s = Server::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("certs");
    let token_file = work.path().join("token");
    write_token(&token_file, &s.token("orders", &["orders.internal"]).await);
    let mut agent = Agent::start(&s, &dir, &token_file, &["--ttl", "30s"]);
    let first = wait_for(&mut agent, &dir, 60, "first certificate", |_| true).await;

    admin(
        &s,
        &format!("/v1/admin/certificates/{}/revoke", first.serial),
        json!({}),
    )
    .await;
    // The spent token is still in the file; an operator drops in a new one.
    write_token(&token_file, &s.token("orders", &["orders.internal"]).await);
    let replaced = wait_for(
        &mut agent,
        &dir,
        60,
        "certificate from the new token",
        |h| h.serial != first.serial,
    )
    .await;
    let rec = s.record(&replaced.serial).await;
    assert!(
        rec["renewed_from"].is_null(),
        "it came from the token, not a renewal: {rec}"
    );
    assert!(rec["token_jti"].is_string());
    let log = agent.log_text();
    assert!(
        log.contains("certificate-revoked") || log.contains("revoked"),
        "{log}"
    );
    assert!(
        log.contains("ERROR"),
        "a refusal is logged as an error:\n{log}"
    );
    assert!(agent.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_certificate_or_token_says_what_to_do() {
    let s = Server::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    let root = s.root_path();
    let (ok, out) = sigil(&[
        "agent",
        "--ca",
        &s.url,
        "--root",
        root.to_str().unwrap(),
        "--out",
        work.path().join("empty").to_str().unwrap(),
    ]);
    assert!(!ok && out.contains("--token-file"), "{out}");
    let (ok, out) = renew_cli(&s, &work.path().join("empty"), &[]);
    assert!(!ok && out.contains("sigil request"), "{out}");
}

/// Many fast swaps with real key pairs, and readers checking every triple they read.
#[test]
fn readers_never_see_a_key_from_another_certificate() {
    let work = tempfile::tempdir().unwrap();
    let dir = CertDir::new(work.path().join("certs"));
    // Every set distinct, as every renewal is: a repeated set could pass a torn read off as
    // a consistent one.
    let sets: Vec<Material> = (0..200)
        .map(|i| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![format!("n{i}.internal")])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            Material {
                chain_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                ca_pem: cert.pem(),
                crls_pem: None,
            }
        })
        .collect();
    dir.write(&sets[0]).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (p, stop) = (dir.path().to_owned(), stop.clone());
            std::thread::spawn(move || poll_reader(p, stop))
        })
        .collect();
    for set in &sets[1..] {
        dir.write(set).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        let (seen, bad) = r.join().unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        assert!(seen > 0);
    }
}

on_both_backends!(request_then_renew_rotates_key_and_serial, refused_renewals);
