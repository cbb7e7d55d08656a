//! Interoperability: what real peers and an independent linter say about sigil's output.
//!
//! Every certificate and CRL here comes from the real server. The judges are pkilint, the
//! openssl CLI, nginx, Python's `ssl`, and a Go standard-library peer, installed by
//! `tests/interop/setup.sh`. These tests are ignored by plain `cargo test` because they need
//! those tools; CI runs them with
//! `tests/interop/setup.sh && cargo test --test interop -- --ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Server};
use serde_json::{json, Value};

const NEEDS_TOOLS: &str = "needs the interop tools: tests/interop/setup.sh, then --ignored";

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn venv() -> PathBuf {
    PathBuf::from(
        std::env::var("SIGIL_INTEROP_VENV").unwrap_or_else(|_| "/tmp/sigil-interop-venv".into()),
    )
}

fn go_peer() -> PathBuf {
    let dir =
        std::env::var("SIGIL_INTEROP_BIN").unwrap_or_else(|_| "/tmp/sigil-interop-bin".into());
    let p = PathBuf::from(dir).join("peer");
    assert!(
        p.exists(),
        "Go peer missing at {}: run tests/interop/setup.sh",
        p.display()
    );
    p
}

fn python_peer() -> Command {
    let py = venv().join("bin/python");
    assert!(
        py.exists(),
        "interop venv missing at {}: run tests/interop/setup.sh",
        py.display()
    );
    let mut c = Command::new(py);
    c.arg(interop_dir().join("python/peer.py"));
    c
}

/// A certificate issued by the server, written as `sigil request` writes it.
struct Issued {
    dir: PathBuf,
    serial: String,
}

impl Issued {
    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
}

async fn issue(s: &Server, work: &Path, name: &str, service: &str, sans: &[&str]) -> Issued {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (csr, key_path) = common::openssl_csr(
        &dir,
        "leaf",
        "ec",
        &["-pkeyopt", "ec_paramgen_curve:P-256"],
        sans,
    );
    std::fs::rename(key_path, dir.join("key.pem")).unwrap();
    let token = s.token(service, sans).await;
    let resp = s
        .http()
        .post(format!("{}/v1/sign", s.url))
        .json(&json!({"csr": csr, "token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    std::fs::write(dir.join("cert.pem"), body["chain"].as_str().unwrap()).unwrap();
    std::fs::write(dir.join("leaf.pem"), body["certificate"].as_str().unwrap()).unwrap();
    Issued {
        dir,
        serial: body["serial"].as_str().unwrap().to_owned(),
    }
}

/// Revokes `serial` and waits until the served CRL lists it.
async fn revoke_and_wait(s: &Server, serial: &str, reason: &str) {
    let resp = s
        .http()
        .post(format!("{}/v1/admin/certificates/{serial}/revoke", s.url))
        .bearer_auth(s.admin_key())
        .json(&json!({ "reason": reason }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let der = s
            .http()
            .get(format!("{}/v1/crl", s.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        if crl
            .iter_revoked_certificates()
            .any(|r| hex::encode(r.raw_serial()).trim_start_matches('0') == serial)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "revocation of {serial} never reached the served CRL"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The files peers load: ca.pem (bundle) and crls.pem, fresh from the server.
async fn trust_files(s: &Server, work: &Path) -> (PathBuf, PathBuf) {
    let ca = work.join("ca.pem");
    let crls = work.join("crls.pem");
    std::fs::write(&ca, s.get_text("/v1/bundle").await).unwrap();
    std::fs::write(&crls, s.get_text("/v1/crls.pem").await).unwrap();
    (ca, crls)
}

fn pkilint(args: &[&Path], mode: &str) {
    let mut cmd = Command::new(interop_dir().join("pkilint.sh"));
    cmd.arg(mode).args(args);
    let (ok, out) = common::run(&mut cmd);
    assert!(ok, "pkilint {mode} {args:?} found problems:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop tools: tests/interop/setup.sh, then --ignored"]
async fn pkilint_finds_nothing() {
    let _ = NEEDS_TOOLS;
    // A deployment's public URL names a real host; pkilint refuses single-label hosts such as
    // localhost in a URI, which is only the default for trying sigil out.
    let s = Server::start_with(
        Backend::Sqlite,
        &[
            "--trust-domain",
            "example.org",
            "--crl-publish-delay",
            "1s",
            "--public-url",
            "https://ca.example.internal:8443",
        ],
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let leaf = issue(
        &s,
        work.path(),
        "leaf",
        "payments",
        &["payments.internal", "10.0.0.9"],
    )
    .await;
    let sibling = issue(
        &s,
        work.path(),
        "sibling",
        "payments",
        &["payments.internal"],
    )
    .await;
    revoke_and_wait(&s, &sibling.serial, "keyCompromise").await;

    let crl = work.path().join("intermediate.crl.pem");
    let arl = work.path().join("root.crl.pem");
    std::fs::write(&crl, s.get_text("/v1/crl?format=pem").await).unwrap();
    std::fs::write(&arl, s.get_text("/v1/crl/root?format=pem").await).unwrap();
    let root = s.data_dir.join("root.crt");
    let intermediate = s.data_dir.join("intermediate.crt");
    let server_cert = s.data_dir.join("server.crt");

    pkilint(&[&leaf.dir.join("leaf.pem")], "cert");
    pkilint(&[&root], "cert");
    pkilint(&[&intermediate], "cert");
    pkilint(&[&server_cert], "cert");
    pkilint(&[&crl], "crl");
    pkilint(&[&arl], "arl");
    pkilint(&[&root, &intermediate], "chain");
    pkilint(&[&intermediate, &leaf.dir.join("leaf.pem")], "chain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop tools: tests/interop/setup.sh, then --ignored"]
async fn openssl_verify_uses_served_crls() {
    let s = Server::start_with(Backend::Sqlite, &["--crl-publish-delay", "1s"]).await;
    let work = tempfile::tempdir().unwrap();
    let good = issue(&s, work.path(), "good", "payments", &["payments.internal"]).await;
    let bad = issue(&s, work.path(), "bad", "payments", &["payments.internal"]).await;
    revoke_and_wait(&s, &bad.serial, "keyCompromise").await;
    let (ca, crls) = trust_files(&s, work.path()).await;
    let verify = |cert: &Path| {
        common::run(
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(&ca)
                .arg("-untrusted")
                .arg(cert)
                .arg("-crl_check_all")
                .arg("-CRLfile")
                .arg(&crls)
                .arg(cert),
        )
    };
    let (ok, out) = verify(&good.cert());
    assert!(ok, "the unrevoked sibling must verify: {out}");
    let (ok, out) = verify(&bad.cert());
    assert!(
        !ok && out.contains("certificate revoked"),
        "the revoked certificate must be refused: {out}"
    );
}

/// A server process of one of the peers, stopped on drop.
struct Peer {
    name: &'static str,
    child: Option<Child>,
    nginx_dir: Option<PathBuf>,
    port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(d) = &self.nginx_dir {
            let _ = Command::new(interop_dir().join("nginx.sh"))
                .arg("stop")
                .arg("--dir")
                .arg(d)
                .status();
        }
    }
}

fn wait_port_file(path: &Path, child: &mut Child, what: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(p) = std::fs::read_to_string(path) {
            if let Ok(port) = p.trim().parse() {
                return port;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} server exited early: {st}");
        }
        assert!(Instant::now() < deadline, "{what} server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_peer(name: &'static str, work: &Path, server: &Issued, ca: &Path, crls: &Path) -> Peer {
    match name {
        "go" | "python" => {
            let port_file = work.join(format!("{name}.port"));
            let mut cmd = if name == "go" {
                Command::new(go_peer())
            } else {
                python_peer()
            };
            cmd.arg("server")
                .arg("--cert")
                .arg(server.cert())
                .arg("--key")
                .arg(server.key())
                .arg("--ca")
                .arg(ca)
                .arg("--crl")
                .arg(crls)
                .args(["--listen", "127.0.0.1:0", "--port-file"])
                .arg(&port_file)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().unwrap();
            let port = wait_port_file(&port_file, &mut child, name);
            Peer {
                name,
                child: Some(child),
                nginx_dir: None,
                port,
            }
        }
        "nginx" => {
            let dir = work.join("nginx");
            std::fs::create_dir_all(&dir).unwrap();
            let out = Command::new(interop_dir().join("nginx.sh"))
                .arg("start")
                .arg("--dir")
                .arg(&dir)
                .arg("--cert")
                .arg(server.cert())
                .arg("--key")
                .arg(server.key())
                .arg("--ca")
                .arg(ca)
                .arg("--crl")
                .arg(crls)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "nginx did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let port = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            Peer {
                name,
                child: None,
                nginx_dir: Some(dir),
                port,
            }
        }
        other => panic!("unknown peer {other}"),
    }
}

/// Connects as `client` with the given identity; true when the server admitted it (its
/// answer starts with "ok").
fn connect(client: &str, peer: &Peer, id: &Issued, ca: &Path, crls: &Path) -> (bool, String) {
    let url = format!("https://localhost:{}/", peer.port);
    match client {
        "go" | "python" => {
            let mut cmd = if client == "go" {
                Command::new(go_peer())
            } else {
                python_peer()
            };
            cmd.arg("client")
                .arg("--cert")
                .arg(id.cert())
                .arg("--key")
                .arg(id.key())
                .arg("--ca")
                .arg(ca)
                .arg("--crl")
                .arg(crls)
                .arg("--url")
                .arg(&url);
            let (ok, out) = common::run(&mut cmd);
            (ok && out.contains("ok "), out)
        }
        "openssl" => {
            let mut child = Command::new("openssl")
                .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
                .arg(format!("127.0.0.1:{}", peer.port))
                .args(["-servername", "localhost", "-cert"])
                .arg(id.cert())
                .arg("-cert_chain")
                .arg(id.cert())
                .arg("-key")
                .arg(id.key())
                .arg("-CAfile")
                .arg(ca)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            let _ = child
                .stdin
                .take()
                .unwrap()
                .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (text.lines().any(|l| l.starts_with("ok ")), text)
        }
        other => panic!("unknown client {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop tools: tests/interop/setup.sh, then --ignored"]
async fn mtls_peers_admit_good_and_refuse_revoked() {
    let s = Server::start_with(Backend::Sqlite, &["--crl-publish-delay", "1s"]).await;
    let work = tempfile::tempdir().unwrap();
    let server = issue(
        &s,
        work.path(),
        "server",
        "peer-server",
        &["localhost", "127.0.0.1"],
    )
    .await;
    let good = issue(
        &s,
        work.path(),
        "good",
        "good-client",
        &["good-client.internal"],
    )
    .await;
    let revoked = issue(
        &s,
        work.path(),
        "revoked",
        "revoked-client",
        &["revoked-client.internal"],
    )
    .await;
    revoke_and_wait(&s, &revoked.serial, "keyCompromise").await;
    let (ca, crls) = trust_files(&s, work.path()).await;

    for server_kind in ["nginx", "python", "go"] {
        let peer = start_peer(server_kind, work.path(), &server, &ca, &crls);
        for client in ["openssl", "python", "go"] {
            let (ok, out) = connect(client, &peer, &good, &ca, &crls);
            assert!(
                ok,
                "{} server must admit the good {client} client:\n{out}",
                peer.name
            );
            let (ok, out) = connect(client, &peer, &revoked, &ca, &crls);
            assert!(
                !ok,
                "{} server must refuse the revoked {client} client:\n{out}",
                peer.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the interop tools: tests/interop/setup.sh, then --ignored"]
async fn csrs_from_every_tool_and_key_type_are_accepted() {
    let s = Server::start(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("ca.pem");
    std::fs::write(&bundle, s.get_text("/v1/bundle").await).unwrap();
    let key_types = ["p256", "p384", "ed25519", "rsa2048", "rsa3072", "rsa4096"];
    let mut csrs: Vec<(String, String)> = Vec::new();
    for kt in key_types {
        for tool in ["go", "python"] {
            let csr = work.path().join(format!("{tool}-{kt}.csr"));
            let key = work.path().join(format!("{tool}-{kt}.key"));
            let mut cmd = if tool == "go" {
                Command::new(go_peer())
            } else {
                python_peer()
            };
            cmd.args([
                "csr",
                "--key-type",
                kt,
                "--cn",
                "payments",
                "--dns",
                "payments.internal",
                "--key-out",
            ])
            .arg(&key)
            .arg("--csr-out")
            .arg(&csr);
            let (ok, out) = common::run(&mut cmd);
            assert!(ok, "{tool} csr {kt}: {out}");
            csrs.push((
                format!("{tool} {kt}"),
                std::fs::read_to_string(&csr).unwrap(),
            ));
        }
    }
    for (label, alg) in [
        ("rcgen p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("rcgen p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("rcgen ed25519", &rcgen::PKCS_ED25519),
    ] {
        csrs.push((
            label.into(),
            common::rcgen_csr(alg, &["payments.internal"]).0,
        ));
    }
    for (label, csr) in csrs {
        let token = s.token("payments", &["payments.internal"]).await;
        let resp = s
            .http()
            .post(format!("{}/v1/sign", s.url))
            .json(&json!({"csr": csr, "token": token}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 201, "{label}: {body}");
        let chain = work.path().join("chain.pem");
        std::fs::write(&chain, body["chain"].as_str().unwrap()).unwrap();
        let (ok, out) = common::run(
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(&bundle)
                .arg("-untrusted")
                .arg(&chain)
                .arg(&chain),
        );
        assert!(ok, "{label}: {out}");
    }
}
