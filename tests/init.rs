//! `sigil init`: a new CA, or an imported one, and what it leaves in the data directory.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::run;

fn init(dir: &Path, extra: &[&str]) -> (bool, String) {
    run(Command::new(common::BIN)
        .arg("init")
        .arg("--data-dir")
        .arg(dir)
        .args(extra))
}

#[test]
fn init_creates_the_documented_files_and_refuses_to_run_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (ok, out) = init(&dir, &["--dns", "ca.internal", "--ip", "10.9.8.7"]);
    assert!(ok, "{out}");
    let root = std::fs::read_to_string(dir.join("root.crt")).unwrap();
    let der = sigil::pem::decode_all(&root, "CERTIFICATE")
        .unwrap()
        .remove(0);
    assert!(
        out.contains(&sigil::ca::sha256_hex(&der)),
        "init prints the root fingerprint: {out}"
    );
    let admin = std::fs::read_to_string(dir.join("admin.key")).unwrap();
    assert!(out.contains(admin.trim()), "init shows the admin key once");
    for (file, mode) in [
        ("root.crt", 0o644),
        ("intermediate.crt", 0o644),
        ("server.crt", 0o644),
        ("root.key", 0o600),
        ("intermediate.key", 0o600),
        ("server.key", 0o600),
        ("admin.key", 0o600),
        ("provisioner.key", 0o600),
    ] {
        let m = std::fs::metadata(dir.join(file))
            .unwrap_or_else(|_| panic!("{file} missing"))
            .permissions()
            .mode();
        assert_eq!(m & 0o777, mode, "{file}");
    }
    let db_mode = std::fs::metadata(dir.join("sigil.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(db_mode & 0o777, 0o600, "the database holds the audit trail");
    let text = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(dir.join("server.crt")))
    .1;
    for name in [
        "DNS:localhost",
        "DNS:ca.internal",
        "IP Address:127.0.0.1",
        "IP Address:10.9.8.7",
    ] {
        assert!(
            text.contains(name),
            "server certificate lacks {name}: {text}"
        );
    }
    let (ok, out) = init(&dir, &[]);
    assert!(!ok && out.contains("already holds a CA"), "{out}");
}

/// openssl genpkey arguments for a P-256 key.
const P256: &str = "-algorithm EC -pkeyopt ec_paramgen_curve:P-256";

/// Makes a root and an intermediate with the openssl CLI; `int_key` are the genpkey arguments
/// for the intermediate's key.
fn openssl_ca(dir: &Path, intermediate_ku: &str, int_key: &str) {
    let sh = format!(
        r#"set -e
cd {dir}
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root.key 2>/dev/null
openssl req -x509 -new -key root.key -subj "/O=Example/CN=Example Root" -days 3650 -out root.crt \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
openssl genpkey {int_key} -out int.key 2>/dev/null
openssl req -new -key int.key -subj "/O=Example/CN=Example Intermediate" -out int.csr
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,{intermediate_ku}\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' > ext
openssl x509 -req -in int.csr -CA root.crt -CAkey root.key -CAcreateserial -days 1825 -extfile ext -out int.crt 2>/dev/null
"#,
        dir = dir.display()
    );
    let (ok, out) = run(Command::new("sh").arg("-c").arg(sh));
    assert!(ok, "{out}");
}

fn import_args(src: &Path) -> Vec<String> {
    [
        ("--import-root-cert", "root.crt"),
        ("--import-root-key", "root.key"),
        ("--import-intermediate-cert", "int.crt"),
        ("--import-intermediate-key", "int.key"),
    ]
    .iter()
    .flat_map(|(flag, file)| [flag.to_string(), src.join(file).display().to_string()])
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_ca_issues_certificates_that_chain_to_it() {
    imported_ca_issues(P256, true).await;
}

/// An RSA intermediate signs in milliseconds, so issuance takes the blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_rsa_intermediate_issues_too() {
    imported_ca_issues("-algorithm RSA -pkeyopt rsa_keygen_bits:2048", false).await;
}

async fn imported_ca_issues(int_key: &str, signs_quickly: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    openssl_ca(&src, "keyCertSign,cRLSign", int_key);
    let dir = tmp.path().join("data");
    let args = import_args(&src);
    let (ok, out) = init(&dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{out}");
    let ca = sigil::ca::Ca::load(&sigil::ca::CaFiles::new(&dir)).unwrap();
    assert_eq!(ca.signs_quickly(), signs_quickly);
    assert_eq!(
        std::fs::metadata(dir.join("intermediate.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Serve from that directory and issue; the chain must verify against the imported root.
    let mut s = common::Server::start(common::Backend::Sqlite).await;
    s.stop();
    std::fs::remove_dir_all(&s.data_dir).unwrap();
    copy_dir(&dir, &s.data_dir);
    s.database_url = sigil::config::default_database_url(&s.data_dir);
    s.restart().await;
    let token = s.token("payments", &["payments.internal"]).await;
    let (csr, _) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["payments.internal"]);
    let resp = s
        .http()
        .post(format!("{}/v1/sign", s.url))
        .json(&serde_json::json!({"csr": csr, "token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: serde_json::Value = resp.json().await.unwrap();
    let chain = tmp.path().join("chain.pem");
    std::fs::write(&chain, body["chain"].as_str().unwrap()).unwrap();
    let (ok, out) = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(src.join("root.crt"))
        .arg("-untrusted")
        .arg(&chain)
        .arg(&chain));
    assert!(ok, "{out}");
}

#[test]
fn import_refuses_unfit_ca_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    openssl_ca(&src, "keyCertSign", P256);
    let args = import_args(&src);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out) = init(&tmp.path().join("a"), &args);
    assert!(
        !ok && out.contains("cRLSign"),
        "an intermediate that cannot sign CRLs is refused: {out}"
    );

    openssl_ca(&src, "keyCertSign,cRLSign", P256);
    std::fs::copy(src.join("root.key"), src.join("int.key")).unwrap();
    let (ok, out) = init(&tmp.path().join("b"), &args);
    assert!(
        !ok && out.contains("does not belong"),
        "a key that does not match is refused: {out}"
    );
    assert!(
        !tmp.path().join("b/intermediate.key").exists(),
        "nothing is written on refusal"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        std::fs::copy(e.path(), &dest).unwrap();
    }
}
