//! What an operator relies on: `serve --help` documents every setting, `sigil.toml` applies
//! and environment and flags override it, `/metrics` exposes what to alert on and its
//! counters move, and JSON logs are one object per line with fields and no secrets.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Backend, Server};
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

async fn sign(s: &Server, token: &str) -> (u16, Value, String) {
    let (csr, key) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["api.ops.internal"]);
    let (status, body) = s.sign(&csr, token, None).await;
    (status, body, key)
}

/// The claims of a JWT, read without checking it (the server already did).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("claims JSON")
}

fn first_cert(pem: &str) -> Vec<u8> {
    let start = pem.find("-----BEGIN CERTIFICATE-----").expect("PEM");
    let body: String = pem[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .expect("PEM base64")
}

#[test]
fn serve_help_documents_every_setting_and_its_default() {
    let (ok, help) = common::run(Command::new(common::BIN).args(["serve", "--help"]));
    assert!(ok, "{help}");
    // Split the help into one block per option.
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("--") {
            let flag = rest.split([' ', '<']).next().unwrap_or_default().to_owned();
            blocks.push((flag, String::new()));
        } else if trimmed.starts_with("-h, --help") {
            blocks.push(("help".into(), String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(trimmed);
            text.push(' ');
        }
    }
    let flags: Vec<&str> = blocks.iter().map(|(f, _)| f.as_str()).collect();
    for expected in [
        "data-dir",
        "listen",
        "database-url",
        "db-max-connections",
        "policies",
        "public-url",
        "audience",
        "trust-domain",
        "default-ttl",
        "max-ttl",
        "max-token-lifetime",
        "token-ttl",
        "crl-validity",
        "crl-publish-delay",
        "dns",
        "ip",
        "organization",
        "log-format",
        "request-timeout",
    ] {
        assert!(
            flags.contains(&expected),
            "--{expected} missing from:\n{help}"
        );
    }
    for (flag, text) in &blocks {
        if flag == "help" || flag == "addr-file" {
            continue;
        }
        assert!(
            text.contains("[default: "),
            "--{flag} names no default: {text}"
        );
        let env = format!("[env: SIGIL_{}=", flag.to_uppercase().replace('-', "_"));
        assert!(text.contains(&env), "--{flag} names no {env}]: {text}");
    }
    assert!(help.contains("sigil.toml"), "{help}");
    assert!(help.contains("SIGIL_LOG"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_applies_and_environment_and_flags_override_it() {
    let file = r#"
        # Every setting here differs from its default.
        listen = "127.0.0.1:1"
        audience = "file-audience"
        organization = "File Org"
        dns = ["ca.file.internal"]
        public_url = "https://ca.file.internal:9443/"
        trust_domain = "file.internal"
        db_max_connections = 3
        crl_validity = "12h"
        default_ttl = "2h"
        token_ttl = "7m"
        log_format = "json"
    "#;
    // default_ttl: the environment beats the file. token_ttl: the flag beats both.
    // listen: the harness's --listen 127.0.0.1:0 beats the file's unusable port 1.
    let s = Server::start_configured(
        Backend::Sqlite,
        &["--token-ttl", "9m"],
        &[("SIGIL_DEFAULT_TTL", "3h"), ("SIGIL_TOKEN_TTL", "8m")],
        Some(file),
    )
    .await;
    assert!(!s.addr.ends_with(":1"), "the flag did not override listen");

    // token_ttl and audience.
    let resp = s
        .http()
        .post(format!("{}/v1/admin/tokens", s.url))
        .bearer_auth(s.admin_key())
        .json(&json!({ "service": "ops", "sans": ["api.ops.internal"] }))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 201);
    let grant: Value = resp.json().await.expect("grant");
    let token = grant["token"].as_str().expect("token");
    let c = claims(token);
    assert_eq!(c["aud"], json!(["file-audience"]), "{c}");
    let lifetime = c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat");
    assert_eq!(lifetime, 9 * 60, "token lifetime should come from the flag");

    // default_ttl from the environment, public_url and trust_domain from the file.
    let (status, body, _) = sign(&s, token).await;
    assert_eq!(status, 201, "{body}");
    let der = first_cert(body["certificate"].as_str().expect("certificate"));
    let (_, leaf) = X509Certificate::from_der(&der).expect("leaf");
    let v = leaf.validity();
    let span = v.not_after.timestamp() - v.not_before.timestamp();
    // notBefore is backdated by about a minute.
    assert!(
        (3 * 3600..=3 * 3600 + 120).contains(&span),
        "lifetime {span}s should be the environment's 3h"
    );
    let leaf_path = s.dir.path().join("leaf.pem");
    std::fs::write(&leaf_path, body["certificate"].as_str().expect("PEM")).expect("leaf.pem");
    let (_, text) = common::run(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(&leaf_path),
    );
    assert!(
        text.contains("URI:https://ca.file.internal:9443/v1/crl"),
        "{text}"
    );
    assert!(text.contains("URI:spiffe://file.internal/ops"), "{text}");

    // organization and dns shaped the CA and server certificates made on first start.
    let root_der = first_cert(&std::fs::read_to_string(s.root_path()).expect("root.crt"));
    let (_, root) = X509Certificate::from_der(&root_der).expect("root");
    let subject = root.subject().to_string();
    assert!(subject.contains("O=File Org"), "{subject}");
    let server = std::fs::read_to_string(s.data_dir.join("server.crt")).expect("server.crt");
    let server_der = first_cert(&server);
    let (_, server) = X509Certificate::from_der(&server_der).expect("server cert");
    let names = format!("{:?}", server.subject_alternative_name());
    assert!(names.contains("ca.file.internal"), "{names}");

    // crl_validity.
    let crl = s
        .http()
        .get(format!("{}/v1/crl", s.url))
        .send()
        .await
        .expect("crl")
        .bytes()
        .await
        .expect("crl body");
    let (_, crl) = CertificateRevocationList::from_der(&crl).expect("crl");
    let next = crl.next_update().expect("nextUpdate").timestamp();
    assert_eq!(next - crl.last_update().timestamp(), 12 * 3600);

    // db_max_connections.
    let metrics = scrape(&s).await;
    assert_eq!(metrics["sigil_db_pool_max_connections"], 3.0);

    // log_format: every line of the log is JSON.
    for line in s.log_text().lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
}

/// The samples of a /metrics scrape, keyed by name with labels, as Prometheus shows them.
/// Checks on the way that every sample belongs to a family declared with `# TYPE`.
async fn scrape(s: &Server) -> BTreeMap<String, f64> {
    let resp = s
        .http()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .expect("metrics request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("metrics body");
    let mut declared = Vec::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            declared.push(rest.split(' ').next().expect("family").to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let name = key.split('{').next().expect("name");
        assert!(
            declared.iter().any(|f| name == f
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(f))),
            "sample {key} has no # TYPE"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {key}"));
        assert!(
            samples.insert(key.to_owned(), value).is_none(),
            "{key} twice"
        );
    }
    samples
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

async fn metrics_expose_what_to_alert_on_and_counters_move(backend: Backend) {
    let s = Server::start_with(backend, &["--crl-publish-delay", "1s"]).await;
    let before = scrape(&s).await;

    // Gauges that are there from the start.
    let root_left = get(&before, "sigil_ca_expiry_seconds{ca=\"root\"}");
    let int_left = get(&before, "sigil_ca_expiry_seconds{ca=\"intermediate\"}");
    assert!(root_left > int_left && int_left > 86_400.0, "{before:?}");
    let crl_age = get(&before, "sigil_crl_age_seconds{scope=\"intermediate\"}");
    assert!((0.0..60.0).contains(&crl_age), "{before:?}");
    assert!(get(&before, "sigil_crl_bytes{scope=\"intermediate\"}") > 100.0);
    assert!(get(&before, "sigil_crl_bytes{scope=\"root\"}") > 100.0);
    let open = get(&before, "sigil_db_pool_connections{state=\"open\"}");
    let in_use = get(&before, "sigil_db_pool_connections{state=\"in_use\"}");
    assert!(open >= 1.0 && in_use <= open, "{before:?}");
    assert_eq!(get(&before, "sigil_db_pool_max_connections"), 16.0);

    // Three issuances, one replay, one wrong admin key, one renewal, one revocation.
    let mut issued = Vec::new();
    let mut token = String::new();
    for _ in 0..3 {
        token = s.token("ops", &["api.ops.internal"]).await;
        let (status, body, key) = sign(&s, &token).await;
        assert_eq!(status, 201, "{body}");
        issued.push((body, key));
    }
    let (status, body, _) = sign(&s, &token).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token-replayed"))
    );
    let resp = s
        .http()
        .get(format!("{}/v1/admin/certificates", s.url))
        .bearer_auth("sigil_admin_000000000000_not-a-real-key")
        .send()
        .await
        .expect("admin request");
    assert_eq!(resp.status(), 401);

    let (body, key) = &issued[0];
    let holder = s
        .client()
        .with_identity(body["chain"].as_str().expect("chain"), key)
        .expect("mTLS client");
    let (csr, _) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["api.ops.internal"]);
    let resp = holder
        .http()
        .post(format!("{}/v1/renew", s.url))
        .json(&json!({ "csr": csr }))
        .send()
        .await
        .expect("renew request");
    assert_eq!(resp.status(), 201);

    let serial = issued[1].0["serial"].as_str().expect("serial");
    let resp = s
        .http()
        .post(format!("{}/v1/admin/certificates/{serial}/revoke", s.url))
        .bearer_auth(s.admin_key())
        .json(&json!({ "reason": "keyCompromise" }))
        .send()
        .await
        .expect("revoke request");
    assert_eq!(resp.status(), 200);

    // Wait for the CRL listing the revocation, then read the counters.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = scrape(&s).await;
        if get(&m, "sigil_crl_number{scope=\"intermediate\"}")
            > get(&before, "sigil_crl_number{scope=\"intermediate\"}")
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no new CRL after the revocation");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let moved = |key: &str| get(&after, key) - get(&before, key);
    assert_eq!(moved("sigil_issuances_total"), 3.0);
    assert_eq!(moved("sigil_renewals_total"), 1.0);
    assert_eq!(
        moved("sigil_revocations_total{reason=\"keyCompromise\"}"),
        1.0
    );
    assert_eq!(moved("sigil_refusals_total{code=\"token-replayed\"}"), 1.0);
    assert_eq!(moved("sigil_refusals_total{code=\"bad-admin-key\"}"), 1.0);
    assert!(
        get(&after, "sigil_crl_bytes{scope=\"intermediate\"}")
            > get(&before, "sigil_crl_bytes{scope=\"intermediate\"}"),
        "the CRL did not grow by its new entry"
    );

    // Latency histograms: per route, cumulative buckets ending in +Inf = count.
    let sign_count = get(
        &after,
        "sigil_request_duration_seconds_count{route=\"/v1/sign\"}",
    );
    assert_eq!(sign_count, 4.0);
    let buckets: Vec<f64> = after
        .iter()
        .filter(|(k, _)| k.starts_with("sigil_request_duration_seconds_bucket{route=\"/v1/sign\""))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 5);
    assert_eq!(
        get(
            &after,
            "sigil_request_duration_seconds_bucket{route=\"/v1/sign\",le=\"+Inf\"}"
        ),
        sign_count
    );
    assert!(
        get(
            &after,
            "sigil_request_duration_seconds_sum{route=\"/v1/sign\"}"
        ) > 0.0
    );
    for route in ["/v1/renew", "/v1/admin/certificates/{serial}/revoke"] {
        let key = format!("sigil_request_duration_seconds_count{{route=\"{route}\"}}");
        assert_eq!(get(&after, &key), 1.0, "{key}");
    }
}

on_both_backends!(metrics_expose_what_to_alert_on_and_counters_move);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_fields_and_no_secrets() {
    // Debug level, so that whatever the libraries log is checked too.
    let s = Server::start_configured(
        Backend::Postgres,
        &["--log-format", "json"],
        &[("SIGIL_LOG", "debug")],
        None,
    )
    .await;
    let admin_key = s.admin_key();
    let wrong_key = "sigil_admin_0123456789ab_ThisIsNotTheKeyButMustNotBeLoggedEither";

    let token = s.token("ops", &["api.ops.internal"]).await;
    let (status, body, _) = sign(&s, &token).await;
    assert_eq!(status, 201, "{body}");
    let serial = body["serial"].as_str().expect("serial").to_owned();
    let (status, _, _) = sign(&s, &token).await;
    assert_eq!(status, 401);
    let resp = s
        .http()
        .post(format!("{}/v1/admin/tokens", s.url))
        .bearer_auth(wrong_key)
        .json(&json!({ "service": "ops" }))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 401);
    let resp = s
        .http()
        .post(format!("{}/v1/admin/certificates/{serial}/revoke", s.url))
        .bearer_auth(&admin_key)
        .send()
        .await
        .expect("revoke request");
    assert_eq!(resp.status(), 200);
    // Let the CRL rebuild after the revocation be logged too, then stop to flush.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut s = s;
    s.stop();

    let log = s.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 10, "{log}");
    let mut issued_line = None;
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(v[field].is_string(), "no {field} in {line}");
        }
        if v["message"] == "issued certificate" {
            issued_line = Some(v);
        }
    }
    let issued = issued_line.expect("no log line for the issuance");
    assert_eq!(issued["serial"], serial.as_str());
    assert_eq!(issued["service"], "ops");
    assert_eq!(issued["jti"], claims(&token)["jti"]);

    // No secret, whole or in part: not the token (nor its signature), not either admin key
    // (nor the secret half), not a private key.
    let signature = token.rsplit('.').next().expect("signature");
    let admin_secret = admin_key
        .strip_prefix("sigil_admin_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(_id, secret)| secret)
        .expect("admin key layout");
    for secret in [
        token.as_str(),
        signature,
        admin_key.as_str(),
        admin_secret,
        wrong_key,
        "PRIVATE KEY",
    ] {
        assert!(!log.contains(secret), "the log holds a secret: {secret}");
    }
}

/// The writer of issuance records holds a connection of its own, beside the ones requests
/// share: with the fewest allowed for requests, issuance, the admin API and health checks all
/// still get a connection.
async fn two_request_connections_serve_issuance_and_the_rest(backend: Backend) {
    let s = Server::start_with(backend, &["--db-max-connections", "2"]).await;
    let mut serial = String::new();
    for _ in 0..3 {
        let token = s.token("solo", &["api.ops.internal"]).await;
        let (status, body, _) = sign(&s, &token).await;
        assert_eq!(status, 201, "{body}");
        serial = body["serial"].as_str().expect("serial").to_owned();
    }
    let http = s.http();
    let listed = http
        .get(format!("{}/v1/admin/certificates?service=solo", s.url))
        .bearer_auth(s.admin_key())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let revoked = http
        .post(format!("{}/v1/admin/certificates/{serial}/revoke", s.url))
        .bearer_auth(s.admin_key())
        .json(&serde_json::json!({"reason": "superseded"}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let ready = http.get(format!("{}/readyz", s.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(s.count("certificates").await, 3);
}

on_both_backends!(two_request_connections_serve_issuance_and_the_rest);
