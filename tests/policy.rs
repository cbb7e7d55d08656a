//! Policies and provisioners end to end: keys from `sigil provisioner create`, tokens from
//! `sigil token mint`, certificates from the real server over TLS, policy reloads by SIGHUP,
//! and the CI guide's commands run as written.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Backend, Server, BIN};
use serde_json::{json, Value};

/// Runs the sigil binary in `dir`; returns (success, stdout, stderr).
fn sigil(dir: &Path, args: &[&str]) -> (bool, String, String) {
    common::run_split(
        Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env_remove("SIGIL_POLICIES")
            .env_remove("SIGIL_DATA_DIR"),
    )
}

/// A provisioner made by `sigil provisioner create`.
struct Provisioner {
    key: PathBuf,
    /// What it printed: the `[[provisioner]]` table and an example `[[policy]]`.
    toml: String,
}

impl Provisioner {
    /// The `[[provisioner]]` table alone, for tests that write their own policies.
    fn table(&self) -> &str {
        self.toml
            .split("[[policy]]")
            .next()
            .expect("provisioner table")
    }
}

fn provisioner_create(dir: &Path, name: &str, extra: &[&str]) -> Provisioner {
    let key = dir.join(format!("{name}.key"));
    let mut args = vec!["provisioner", "create", "--name", name, "--out"];
    let key_arg = key.to_str().unwrap().to_owned();
    args.push(&key_arg);
    args.extend_from_slice(extra);
    let (ok, toml, err) = sigil(dir, &args);
    assert!(ok, "provisioner create failed: {err}");
    Provisioner { key, toml }
}

/// Mints a token with `sigil token mint`.
fn mint_with(
    key: &Path,
    provisioner: &str,
    service: &str,
    sans: &[&str],
    extra: &[&str],
) -> String {
    let mut args = vec![
        "token",
        "mint",
        "--provisioner-key",
        key.to_str().unwrap(),
        "--provisioner",
        provisioner,
        "--service",
        service,
    ];
    for san in sans {
        args.extend(["--san", san]);
    }
    args.extend_from_slice(extra);
    let (ok, out, err) = sigil(key.parent().unwrap(), &args);
    assert!(ok, "token mint failed: {err}");
    out.trim().to_owned()
}

fn mint(p: &Provisioner, provisioner: &str, service: &str, sans: &[&str]) -> String {
    mint_with(&p.key, provisioner, service, sans, &[])
}

fn csr(sans: &[&str]) -> String {
    common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, sans).0
}

/// Asserts a refusal: status, problem code, and words the detail must hold.
fn refused(answer: &(u16, Value), status: u16, code: &str, words: &[&str]) {
    let (st, body) = answer;
    assert_eq!(*st, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    for w in words {
        assert!(detail.contains(w), "detail lacks {w:?}: {detail}");
    }
}

/// Seconds between not_before and not_after of an issued certificate, less the backdate.
fn lifetime(issued: &Value) -> i64 {
    let t = |k: &str| {
        time::OffsetDateTime::parse(
            issued[k].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
        .unix_timestamp()
    };
    t("not_after") - t("not_before") - sigil::ca::BACKDATE.whole_seconds()
}

fn assert_lifetime(issued: &Value, secs: i64) {
    let got = lifetime(issued);
    assert!(
        (secs - 2..=secs + 2).contains(&got),
        "lifetime {got}s, want {secs}s: {issued}"
    );
}

/// `openssl x509 -text` of the leaf in an answer.
fn cert_text(dir: &Path, issued: &Value) -> String {
    let path = dir.join("leaf.pem");
    std::fs::write(&path, issued["certificate"].as_str().unwrap()).unwrap();
    let (ok, text) = common::run(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&path),
    );
    assert!(ok, "{text}");
    text
}

/// Waits until the server log holds `needle` at least `count` times.
async fn wait_for_log(s: &Server, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.log_text().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?} {count} time(s):\n{}",
            s.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn policy_dir(work: &Path) -> PathBuf {
    let dir = work.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn ci_provisioner_gets_certificates_for_test_identities_only(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let policies = policy_dir(work.path());
    let ci = provisioner_create(
        work.path(),
        "ci",
        &["--identity", "ci-*", "--max-cert-ttl", "2h"],
    );
    std::fs::write(policies.join("ci.toml"), &ci.toml).unwrap();
    let s = Server::start_with(backend, &["--policies", policies.to_str().unwrap()]).await;

    let token = mint(&ci, "ci", "ci-build-42", &["localhost", "127.0.0.1"]);
    let (csr_pem, _) = common::openssl_csr(
        work.path(),
        "ci-build-42",
        "ec",
        &["-pkeyopt", "ec_paramgen_curve:P-256"],
        &["localhost", "127.0.0.1"],
    );
    let (status, issued) = s.sign(&csr_pem, &token, None).await;
    assert_eq!(status, 201, "{issued}");
    // No lifetime asked: the server's 24h default, capped at the provisioner's 2h.
    assert_lifetime(&issued, 7200);
    let text = cert_text(work.path(), &issued);
    assert!(text.contains("Subject: CN = ci-build-42"), "{text}");
    assert!(
        text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    let bundle = s.get_text("/v1/bundle").await;
    let (bundle_path, chain_path) = (work.path().join("ca.pem"), work.path().join("chain.pem"));
    std::fs::write(&bundle_path, bundle).unwrap();
    std::fs::write(&chain_path, issued["chain"].as_str().unwrap()).unwrap();
    let (ok, out) = common::run(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&bundle_path)
            .arg("-untrusted")
            .arg(&chain_path)
            .arg(&chain_path),
    );
    assert!(ok, "openssl verify: {out}");
    let record = s.record(issued["serial"].as_str().unwrap()).await;
    assert_eq!(record["provisioner"], "ci", "{record}");

    let (certs, tokens) = (s.count("certificates").await, s.count("tokens").await);
    // Not a test identity: the provisioner itself refuses, whatever the policies say.
    let token = mint(&ci, "ci", "payments", &["payments.svc.internal"]);
    let answer = s.sign(&csr(&["payments.svc.internal"]), &token, None).await;
    refused(
        &answer,
        403,
        "identity-not-allowed",
        &["provisioner \"ci\" in ci.toml:", "ci-*", "\"payments\""],
    );
    // A test identity, but a name outside the policy.
    let token = mint(&ci, "ci", "ci-build-43", &["ci-build-43.prod.internal"]);
    let answer = s
        .sign(&csr(&["ci-build-43.prod.internal"]), &token, None)
        .await;
    refused(
        &answer,
        403,
        "name-not-allowed",
        &[
            "ci-build-43.prod.internal",
            "policy \"ci certificates\" in ci.toml:",
        ],
    );
    assert_eq!(
        s.count("certificates").await,
        certs,
        "refusals write no row"
    );
    assert_eq!(
        s.count("tokens").await,
        tokens,
        "refused tokens stay unused"
    );
    assert!(
        s.log_text().contains("policy refused certificate"),
        "refusals are logged"
    );
}

async fn tokens_not_from_the_named_provisioner_are_refused(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let policies = policy_dir(work.path());
    let ci = provisioner_create(work.path(), "ci", &["--identity", "ci-*"]);
    std::fs::write(policies.join("ci.toml"), &ci.toml).unwrap();
    // Keys the CA has never seen.
    let other = provisioner_create(work.path(), "other", &[]);
    let ed = provisioner_create(work.path(), "ed", &["--alg", "EdDSA"]);
    let s = Server::start_with(backend, &["--policies", policies.to_str().unwrap()]).await;

    let sans = ["localhost"];
    let cases: Vec<(&str, String, u16, &str, &str)> = vec![
        (
            "unknown provisioner",
            mint(&ci, "nobody", "ci-1", &sans),
            401,
            "unknown-provisioner",
            "\"nobody\"",
        ),
        (
            "ci's name, another ES256 key",
            mint(&other, "ci", "ci-1", &sans),
            401,
            "bad-token",
            "does not verify with the key of provisioner \"ci\"",
        ),
        (
            "ci's name, an EdDSA key",
            mint(&ed, "ci", "ci-1", &sans),
            401,
            "bad-token",
            "provisioner \"ci\" uses ES256",
        ),
        (
            "admin's name, ci's key",
            mint(&ci, "admin", "ci-1", &sans),
            401,
            "bad-token",
            "provisioner \"admin\"",
        ),
        (
            "another audience",
            mint_with(&ci.key, "ci", "ci-1", &sans, &["--audience", "another-ca"]),
            401,
            "bad-token",
            "audience",
        ),
    ];
    for (name, token, status, code, words) in cases {
        let answer = s.sign(&csr(&sans), &token, None).await;
        assert_eq!(answer.0, status, "{name}: {}", answer.1);
        assert_eq!(answer.1["code"], code, "{name}: {}", answer.1);
        assert!(
            answer.1["detail"].as_str().unwrap().contains(words),
            "{name}: {}",
            answer.1
        );
    }
    assert_eq!(s.count("certificates").await, 0);
    assert_eq!(s.count("tokens").await, 0);
    // The real key still works.
    let token = mint(&ci, "ci", "ci-1", &sans);
    assert_eq!(s.sign(&csr(&sans), &token, None).await.0, 201);
}

async fn sighup_reloads_and_a_broken_set_keeps_the_old_one(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let policies = policy_dir(work.path());
    let ci = provisioner_create(work.path(), "ci", &["--identity", "ci-*"]);
    let ci_file = policies.join("ci.toml");
    std::fs::write(&ci_file, &ci.toml).unwrap();
    let s = Server::start_with(backend, &["--policies", policies.to_str().unwrap()]).await;

    let get = |service: &'static str, name: &'static str| {
        let token = mint(&ci, "ci", service, &[name]);
        let s = &s;
        async move { s.sign(&csr(&[name]), &token, None).await }
    };
    assert_eq!(get("ci-1", "localhost").await.0, 201);
    let answer = get("ci-2", "ci-2.test.example").await;
    refused(&answer, 403, "name-not-allowed", &["ci-2.test.example"]);

    // A good change and a broken file together: the whole new set is refused.
    let widened = ci.toml.replace(
        "dns = [\"localhost\", \"{identity}.internal\"]",
        "dns = [\"localhost\", \"{identity}.internal\", \"{identity}.test.example\"]",
    );
    assert_ne!(
        widened, ci.toml,
        "the printed policy has the expected dns line"
    );
    std::fs::write(&ci_file, &widened).unwrap();
    let broken = policies.join("zz-broken.toml");
    std::fs::write(
        &broken,
        "[[policy]]\nname = \"broken\"\nidentities = [\"x\"]\nmax_ttl = \"forever\"\n",
    )
    .unwrap();
    s.signal("HUP");
    wait_for_log(&s, "policy reload failed", 1).await;
    let log = s.log_text();
    assert!(
        log.contains("the previous policies stay in force") && log.contains("zz-broken.toml:4:"),
        "the log says why:\n{log}"
    );
    let answer = get("ci-2", "ci-2.test.example").await;
    refused(&answer, 403, "name-not-allowed", &["ci-2.test.example"]);
    assert_eq!(
        get("ci-3", "localhost").await.0,
        201,
        "the old set still works"
    );

    std::fs::remove_file(&broken).unwrap();
    s.signal("HUP");
    wait_for_log(&s, "reloaded policies", 1).await;
    let answer = get("ci-2", "ci-2.test.example").await;
    assert_eq!(answer.0, 201, "{}", answer.1);

    // Removing the provisioner makes its tokens unknown at once.
    std::fs::remove_file(&ci_file).unwrap();
    s.signal("HUP");
    wait_for_log(&s, "reloaded policies", 2).await;
    refused(
        &get("ci-4", "localhost").await,
        401,
        "unknown-provisioner",
        &["\"ci\""],
    );
}

async fn lifetimes_above_the_maximum_are_refused(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let policies = policy_dir(work.path());
    let ci = provisioner_create(
        work.path(),
        "ci",
        &["--identity", "ci-*", "--max-cert-ttl", "3h"],
    );
    let policy = "\n[[policy]]\nname = \"ci\"\nidentities = [\"ci-*\"]\n\
                  dns = [\"localhost\"]\ndefault_ttl = \"1h\"\nmax_ttl = \"2h\"\n";
    std::fs::write(policies.join("ci.toml"), format!("{}{policy}", ci.table())).unwrap();
    let s = Server::start_with(backend, &["--policies", policies.to_str().unwrap()]).await;

    let token = mint(&ci, "ci", "ci-1", &["localhost"]);
    let (csr_pem, key_pem) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["localhost"]);
    let answer = s.sign(&csr_pem, &token, Some("3h")).await;
    refused(
        &answer,
        403,
        "ttl-too-long",
        &[
            "requested lifetime 3h",
            "longer than 2h, the max_ttl of policy \"ci\" in ci.toml:",
            "ask for 2h or less",
        ],
    );
    // The refusal left the token unused: it still buys a certificate.
    let (status, short) = s.sign(&csr_pem, &token, Some("30m")).await;
    assert_eq!(status, 201, "{short}");
    assert_lifetime(&short, 1800);
    let token = mint(&ci, "ci", "ci-2", &["localhost"]);
    let (status, default) = s.sign(&csr(&["localhost"]), &token, None).await;
    assert_eq!(status, 201, "{default}");
    assert_lifetime(&default, 3600);

    // Renewal without a lifetime gets the policy's default, not the old certificate's 30m;
    // with one above the maximum it is refused the same way.
    let renewer = s
        .client()
        .with_identity(short["chain"].as_str().unwrap(), &key_pem)
        .unwrap();
    let renew = |ttl: Option<&str>| {
        let mut body = json!({ "csr": csr(&[]) });
        if let Some(t) = ttl {
            body["ttl"] = json!(t);
        }
        let req = renewer
            .http()
            .post(format!("{}/v1/renew", s.url))
            .json(&body);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let answer = renew(Some("3h")).await;
    refused(&answer, 403, "ttl-too-long", &["longer than 2h"]);
    let (status, renewed) = renew(None).await;
    assert_eq!(status, 201, "{renewed}");
    assert_lifetime(&renewed, 3600);
    // The old certificate has renewed once and may not renew again.
    let (status, again) = renew(Some("2h")).await;
    assert_eq!(status, 403, "{again}");
    assert_eq!(again["code"], "already-renewed");
}

async fn eddsa_provisioner_works(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let policies = policy_dir(work.path());
    let ci = provisioner_create(
        work.path(),
        "ci-ed",
        &["--alg", "EdDSA", "--identity", "ci-*"],
    );
    assert!(ci.toml.contains("# EdDSA;"), "{}", ci.toml);
    let (ok, text) = common::run(
        Command::new("openssl")
            .args(["pkey", "-noout", "-text", "-in"])
            .arg(&ci.key),
    );
    assert!(ok && text.contains("ED25519"), "{text}");
    std::fs::write(policies.join("ci.toml"), &ci.toml).unwrap();
    let s = Server::start_with(backend, &["--policies", policies.to_str().unwrap()]).await;
    let token = mint(&ci, "ci-ed", "ci-ed-1", &["localhost", "::1"]);
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let (status, issued) = s.sign(&csr(&["localhost", "::1"]), &token, None).await;
    assert_eq!(status, 201, "{issued}");
}

async fn wildcards_need_allow_wildcards(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let policies = policy_dir(work.path());
    let ci = provisioner_create(work.path(), "ci", &["--identity", "ci-*"]);
    std::fs::write(policies.join("ci.toml"), ci.table()).unwrap();
    std::fs::write(
        policies.join("policies.toml"),
        r#"
[[policy]]
name = "ci edge"
identities = ["ci-edge"]
provisioners = ["ci"]
dns = ["*.edge.test"]
allow_wildcards = true

[[policy]]
name = "ci plain"
identities = ["ci-*"]
provisioners = ["ci"]
dns = ["*.plain.test"]
"#,
    )
    .unwrap();
    let s = Server::start_with(backend, &["--policies", policies.to_str().unwrap()]).await;
    let get = |service: &str, name: &str| {
        let token = mint(&ci, "ci", service, &[name]);
        let csr = csr(&[name]);
        let s = &s;
        async move { s.sign(&csr, &token, None).await }
    };
    let (status, issued) = get("ci-edge", "*.edge.test").await;
    assert_eq!(status, 201, "{issued}");
    assert!(cert_text(work.path(), &issued).contains("DNS:*.edge.test"));
    refused(
        &get("ci-plain", "*.plain.test").await,
        403,
        "wildcard-not-allowed",
        &[
            "*.plain.test",
            "policy \"ci plain\" in policies.toml:",
            "allow_wildcards",
        ],
    );
    // A * label in a pattern still matches an ordinary name.
    assert_eq!(get("ci-plain", "a.plain.test").await.0, 201);
    // The first matching policy decides; a later one is not consulted.
    refused(
        &get("ci-edge", "*.plain.test").await,
        403,
        "name-not-allowed",
        &["policy \"ci edge\""],
    );
    // With a [[policy]] in force and none for admin tokens, the admin API refuses at once.
    let resp = s
        .http()
        .post(format!("{}/v1/admin/tokens", s.url))
        .bearer_auth(s.admin_key())
        .json(&json!({ "service": "payments", "sans": ["payments.internal"] }))
        .send()
        .await
        .unwrap();
    let answer = (resp.status().as_u16(), resp.json::<Value>().await.unwrap());
    refused(&answer, 403, "no-policy", &["\"admin\""]);
}

async fn spiffe_ids_with_a_trust_domain(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let policies = policy_dir(work.path());
    let ci = provisioner_create(work.path(), "ci", &["--identity", "ci-*"]);
    let policy = "\n[[policy]]\nname = \"ci jobs\"\nidentities = [\"ci-*\"]\n\
                  dns = [\"localhost\"]\nuri = [\"spiffe://{trust_domain}/ci/*\"]\n";
    std::fs::write(policies.join("ci.toml"), format!("{}{policy}", ci.table())).unwrap();
    // Without a trust domain the policy does not load: check says where.
    let (ok, _, err) = sigil(
        work.path(),
        &[
            "policy",
            "check",
            "--policies",
            policies.to_str().unwrap(),
            "--data-dir",
            work.path().join("no-data").to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains("ci.toml:") && err.contains("--trust-domain"),
        "{err}"
    );

    let s = Server::start_with(
        backend,
        &[
            "--policies",
            policies.to_str().unwrap(),
            "--trust-domain",
            "example.org",
        ],
    )
    .await;
    let get = |names: &[&str]| {
        let token = mint(&ci, "ci", "ci-7", names);
        let csr = csr(names);
        let s = &s;
        async move { s.sign(&csr, &token, None).await }
    };
    let (status, issued) = get(&["localhost", "spiffe://example.org/ci/jobs/7"]).await;
    assert_eq!(status, 201, "{issued}");
    let text = cert_text(work.path(), &issued);
    assert!(
        text.contains("URI:spiffe://example.org/ci-7")
            && text.contains("URI:spiffe://example.org/ci/jobs/7"),
        "{text}"
    );
    // Its own SPIFFE ID may be asked for; it needs no rule.
    assert_eq!(get(&["spiffe://example.org/ci-7"]).await.0, 201);
    for outside in [
        "spiffe://other.org/ci/jobs/7",
        "spiffe://example.org/payments",
        "spiffe://example.org/ci-8",
    ] {
        refused(
            &get(&[outside]).await,
            403,
            "name-not-allowed",
            &[outside, "policy \"ci jobs\""],
        );
    }

    // Dot segments cannot walk out of the allowed prefix: refused as malformed, in the CSR
    // and in the token alike (sigil token mint refuses them too, so the token is built here).
    let escape = "spiffe://example.org/ci/../payments";
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(escape.try_into().unwrap())];
    let escaping_csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let token = mint(&ci, "ci", "ci-7", &["localhost"]);
    refused(
        &s.sign(&escaping_csr, &token, None).await,
        400,
        "bad-name",
        &[escape, "path segment"],
    );
    let signer =
        sigil::token::SigningKey::from_pkcs8_pem(&std::fs::read_to_string(&ci.key).unwrap())
            .unwrap();
    let now = sigil::authority::now_secs();
    let claims = sigil::token::Claims {
        iss: "ci".into(),
        sub: "ci-7".into(),
        sans: vec![escape.into()],
        aud: vec!["sigil".into()],
        iat: now,
        nbf: now,
        exp: now + 300,
        jti: sigil::token::new_jti().unwrap(),
    };
    let token = sigil::token::mint(&signer, &claims).unwrap();
    refused(
        &s.sign(&csr(&[]), &token, None).await,
        401,
        "bad-token",
        &["token sans", "path segment"],
    );
    assert_eq!(
        s.count("tokens").await,
        2,
        "only the two issuances spent tokens"
    );
}

#[test]
fn policy_commands() {
    let work = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let (repo, data) = (repo.to_str().unwrap(), data.to_str().unwrap());
    let with = |extra: &[&str]| {
        let mut args = vec!["--policies", repo, "--data-dir", data];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |cmd: &[&str], extra: &[&str]| {
        let args: Vec<String> = cmd
            .iter()
            .map(|s| s.to_string())
            .chain(with(extra))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sigil(work.path(), &args)
    };

    let (ok, out, err) = run(&["policy", "check"], &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("ok: 2 provisioner(s), 3 policy(ies), 2 file(s)"),
        "{out}"
    );
    assert!(out.contains("ci (ci.toml:"), "{out}");

    let explain = ["policy", "explain"];
    let (ok, out, _) = run(
        &explain,
        &[
            "--provisioner",
            "ci",
            "--service",
            "ci-build-42",
            "--san",
            "localhost",
        ],
    );
    assert!(
        ok && out.starts_with("allowed by policy \"ci test certificates\""),
        "{out}"
    );
    let (ok, out, err) = run(&explain, &["--provisioner", "ci", "--service", "payments"]);
    assert!(
        !ok && out.contains("refused (403 identity-not-allowed)"),
        "{out}"
    );
    assert!(err.contains("would refuse"), "{err}");

    // The data directory's sigil.toml applies, as it does to the server.
    std::fs::write(
        Path::new(data).join("sigil.toml"),
        "max_ttl = \"1h\"\ndefault_ttl = \"30m\"\n",
    )
    .unwrap();
    let (ok, out, _) = run(
        &explain,
        &["--provisioner", "ci", "--service", "ci-1", "--ttl", "2h"],
    );
    assert!(!ok && out.contains("the server's max_ttl"), "{out}");
    let (ok, out, _) = run(&["policy", "check"], &[]);
    assert!(
        ok && out.contains("warnings:") && out.contains("capped"),
        "{out}"
    );

    // A broken directory: non-zero, FILE:LINE on standard error.
    let broken = work.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(
        broken.join("bad.toml"),
        "[[policy]]\nname = \"x\"\nidentities = [\"Bad Name\"]\n",
    )
    .unwrap();
    let (ok, _, err) = sigil(
        work.path(),
        &[
            "policy",
            "check",
            "--policies",
            broken.to_str().unwrap(),
            "--data-dir",
            data,
        ],
    );
    assert!(!ok && err.contains("bad.toml:3: "), "{err}");

    // provisioner create: 0600, and never over an existing file.
    let key = work.path().join("ci.key");
    let args = [
        "provisioner",
        "create",
        "--name",
        "ci",
        "--out",
        key.to_str().unwrap(),
    ];
    let (ok, out, err) = sigil(work.path(), &args);
    assert!(ok, "{err}");
    assert!(out.contains("identities = [\"ci-*\"]"), "{out}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&key).unwrap();
    let (ok, out, err) = sigil(work.path(), &args);
    assert!(
        !ok && out.is_empty() && err.contains("refusing to replace"),
        "{err}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

/// The shell blocks of the README's "CI certificates" section that hold `needle`, in order.
fn doc_blocks(needle: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("\n## CI certificates\n")
        .expect("README has a CI certificates section");
    let section = &readme[start + 1..];
    let end = section[3..]
        .find("\n## ")
        .map(|i| i + 3)
        .unwrap_or(section.len());
    section[..end]
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Steps 1 and 4 of the CI guide, as written, against a real server.
async fn ci_guide_works_as_written(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let bash = |script: &str, env: &[(&str, &str)]| {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("set -euo pipefail\n{script}"))
            .current_dir(work.path())
            .env("PATH", &path)
            .env_remove("SIGIL_POLICIES");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (ok, out) = common::run(&mut cmd);
        assert!(ok, "script failed:\n{script}\n{out}");
        out
    };

    let create = doc_blocks("sigil provisioner create");
    assert_eq!(create.len(), 1);
    bash(&create[0], &[]);
    let policies = policy_dir(work.path());
    std::fs::copy(work.path().join("ci.toml"), policies.join("ci.toml")).unwrap();
    let s = Server::start_with(backend, &["--policies", policies.to_str().unwrap()]).await;

    let mint = doc_blocks("sigil token mint");
    let curl = doc_blocks("/v1/sign");
    assert_eq!((mint.len(), curl.len()), (1, 1));
    for block in [&mint[0], &curl[0]] {
        assert!(
            !block.contains("export SIGIL_CA"),
            "the test supplies the CA"
        );
    }
    let key = work.path().join("ci.key");
    let root = s.root_path();
    let env = [
        ("SIGIL_CA", s.url.as_str()),
        ("SIGIL_ROOT", root.to_str().unwrap()),
        ("SIGIL_PROVISIONER", "ci"),
        ("SIGIL_PROVISIONER_KEY", key.to_str().unwrap()),
        ("BUILD_ID", "42"),
    ];
    let out = bash(&format!("{}\n{}", mint[0], curl[0]), &env);
    assert!(out.contains("certs/cert.pem: OK"), "{out}");
    let certs = work.path().join("certs");
    let mode = std::fs::metadata(certs.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key.pem is private");
    let issued: Value =
        serde_json::from_str(&std::fs::read_to_string(certs.join("issued.json")).unwrap()).unwrap();
    let text = cert_text(work.path(), &issued);
    assert!(text.contains("Subject: CN = ci-build-42"), "{text}");
    assert!(std::fs::read_to_string(certs.join("ca.pem"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

on_both_backends!(ci_provisioner_gets_certificates_for_test_identities_only);

mod sqlite {
    use super::*;

    macro_rules! sqlite_only {
        ($($name:ident),* $(,)?) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(Backend::Sqlite).await
                }
            )*
        };
    }

    sqlite_only!(
        tokens_not_from_the_named_provisioner_are_refused,
        sighup_reloads_and_a_broken_set_keeps_the_old_one,
        lifetimes_above_the_maximum_are_refused,
        eddsa_provisioner_works,
        wildcards_need_allow_wildcards,
        spiffe_ids_with_a_trust_domain,
        ci_guide_works_as_written,
    );
}
