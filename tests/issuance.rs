//! The issuance loop end to end: the real server over TLS, tokens from the admin API, CSRs
//! from openssl and rcgen, results checked by `openssl verify` against the served bundle.

mod common;

use std::process::Command;

use base64::Engine;
use common::{Backend, Server};
use serde_json::{json, Value};

fn openssl_verify(dir: &std::path::Path, bundle: &str, chain: &str) -> (bool, String) {
    let b = dir.join("bundle.pem");
    let c = dir.join("chain.pem");
    std::fs::write(&b, bundle).unwrap();
    std::fs::write(&c, chain).unwrap();
    common::run(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&b)
            .arg("-untrusted")
            .arg(&c)
            .arg(&c),
    )
}

async fn issues_verifiable_certificates(backend: Backend) {
    let s = Server::start(backend).await;
    let work = tempfile::tempdir().unwrap();
    let bundle = s.get_text("/v1/bundle").await;
    assert!(bundle.contains("BEGIN CERTIFICATE"));

    let mut csrs: Vec<(String, String)> = Vec::new();
    for (name, newkey, extra) in [
        ("p256", "ec", vec!["-pkeyopt", "ec_paramgen_curve:P-256"]),
        ("p384", "ec", vec!["-pkeyopt", "ec_paramgen_curve:P-384"]),
        ("ed25519", "ed25519", vec![]),
        ("rsa2048", "rsa:2048", vec![]),
        ("rsa3072", "rsa:3072", vec![]),
    ] {
        let (csr, _) = common::openssl_csr(
            work.path(),
            name,
            newkey,
            &extra,
            &["api.payments.internal"],
        );
        csrs.push((format!("openssl {name}"), csr));
    }
    for (name, alg) in [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519", &rcgen::PKCS_ED25519),
    ] {
        csrs.push((
            format!("rcgen {name}"),
            common::rcgen_csr(alg, &["api.payments.internal"]).0,
        ));
    }
    let mut serials = std::collections::HashSet::new();
    for (label, csr) in &csrs {
        let token = s
            .token("payments", &["api.payments.internal", "10.0.0.7"])
            .await;
        let (status, body) = s.sign(csr, &token, None).await;
        assert_eq!(status, 201, "{label}: {body}");
        let chain = body["chain"].as_str().unwrap();
        let (ok, out) = openssl_verify(work.path(), &bundle, chain);
        assert!(ok, "{label}: openssl verify failed: {out}");
        let serial = body["serial"].as_str().unwrap().to_owned();
        assert!(
            serial.len() >= 32
                && serial
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(serials.insert(serial), "{label}: serial repeated");

        // The leaf profile: CN = identity, only the requested name, EKUs, CA:FALSE, CDP.
        let text = common::run(
            Command::new("openssl")
                .args(["x509", "-noout", "-text"])
                .arg("-in")
                .arg(work.path().join("chain.pem")),
        )
        .1;
        assert!(text.contains("Subject: CN = payments"), "{label}: {text}");
        assert!(
            text.contains("DNS:api.payments.internal") && !text.contains("10.0.0.7"),
            "{label}: {text}"
        );
        assert!(
            text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
            "{label}"
        );
        assert!(
            text.contains("CA:FALSE")
                && text.contains(&format!(
                    "URI:https://localhost:{}/v1/crl",
                    s.addr.rsplit(':').next().unwrap()
                )),
            "{label}: {text}"
        );
        let rsa = label.contains("rsa");
        assert_eq!(
            text.contains("Key Encipherment"),
            rsa,
            "{label}: keyEncipherment only for RSA"
        );
    }
    assert_eq!(s.count("certificates").await, csrs.len() as i64);
    assert_eq!(s.count("tokens").await, csrs.len() as i64);
}

async fn csr_without_names_gets_the_token_names(backend: Backend) {
    let s = Server::start(backend).await;
    let (csr, _) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[]);
    let token = s.token("billing", &["billing.internal", "10.1.2.3"]).await;
    let (status, body) = s.sign(&csr, &token, None).await;
    assert_eq!(status, 201, "{body}");
    let der = sigil::pem::decode_all(body["certificate"].as_str().unwrap(), "CERTIFICATE")
        .unwrap()
        .remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert!(
        (86_400..=86_400 + 120).contains(&lifetime),
        "24h by default plus the backdate, got {lifetime}s"
    );
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// One bad request and what it must get.
struct Case {
    name: &'static str,
    path: &'static str,
    auth: Option<String>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

async fn bad_inputs_are_refused_cleanly(backend: Backend) {
    let s = Server::start(backend).await;
    let admin = s.admin_key();
    let provisioner = std::fs::read_to_string(s.data_dir.join("provisioner.key")).unwrap();
    let admin_signer = sigil::token::SigningKey::from_pkcs8_pem(&provisioner).unwrap();
    let (other_signer, _) =
        sigil::token::SigningKey::generate(sigil::token::Algorithm::ES256).unwrap();
    let now = sigil::authority::now_secs();
    let claims = |iss: &str, iat: i64, exp: i64| sigil::token::Claims {
        iss: iss.into(),
        sub: "payments".into(),
        sans: vec!["payments.internal".into()],
        aud: vec!["sigil".into()],
        iat,
        nbf: iat,
        exp,
        jti: sigil::token::new_jti().unwrap(),
    };
    let good_csr = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["payments.internal"]).0;
    let sign_body = |csr: &str, token: &str| {
        serde_json::to_vec(&json!({ "csr": csr, "token": token })).unwrap()
    };

    // A CSR whose signed bytes were altered after signing: flip a byte in the subject.
    let mut der = sigil::pem::decode_all(&good_csr, "CERTIFICATE REQUEST")
        .unwrap()
        .remove(0);
    let pos = der
        .windows(8)
        .position(|w| w == b"rcgen se")
        .expect("rcgen's default CN");
    der[pos] ^= 0x01;
    let tampered = sigil::pem::encode("CERTIFICATE REQUEST", &der);
    let work = tempfile::tempdir().unwrap();
    let (rsa1024, _) =
        common::openssl_csr(work.path(), "weak", "rsa:1024", &[], &["payments.internal"]);
    let (sha1, _) = common::openssl_csr(
        work.path(),
        "sha1",
        "rsa:2048",
        &["-sha1"],
        &["payments.internal"],
    );
    let (p521, _) = common::openssl_csr(
        work.path(),
        "p521",
        "ec",
        &["-pkeyopt", "ec_paramgen_curve:P-521"],
        &["payments.internal"],
    );
    let other_name = common::rcgen_csr(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &["payments.internal", "admin.internal"],
    )
    .0;
    let wildcard = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["*.internal"]).0;

    let replayed = s.token("payments", &["payments.internal"]).await;
    let (st, _) = s.sign(&good_csr, &replayed, None).await;
    assert_eq!(st, 201);
    let baseline_certs = s.count("certificates").await;
    let baseline_tokens = s.count("tokens").await;

    let expired =
        sigil::token::mint(&admin_signer, &claims("admin", now - 7200, now - 3600)).unwrap();
    let forged = sigil::token::mint(&other_signer, &claims("admin", now, now + 600)).unwrap();
    let unknown = sigil::token::mint(&other_signer, &claims("nobody", now, now + 600)).unwrap();
    let mut wrong_aud_claims = claims("admin", now, now + 600);
    wrong_aud_claims.aud = vec!["another-ca".into()];
    let wrong_aud = sigil::token::mint(&admin_signer, &wrong_aud_claims).unwrap();
    let payload = b64(&serde_json::to_vec(&claims("admin", now, now + 600)).unwrap());
    let alg_none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    let hs256 = format!(
        "{}.{payload}.{}",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(b"mac")
    );
    let mut wildcard_claims = claims("admin", now, now + 600);
    wildcard_claims.sans = vec!["*.internal".into()];
    let wildcard_token = sigil::token::mint(&admin_signer, &wildcard_claims).unwrap();
    let fresh = || async { s.token("payments", &["payments.internal"]).await };

    let cases = vec![
        Case {
            name: "empty body",
            path: "/v1/sign",
            auth: None,
            body: vec![],
            status: 400,
            code: "bad-json",
        },
        Case {
            name: "not JSON",
            path: "/v1/sign",
            auth: None,
            body: b"csr=abc".to_vec(),
            status: 400,
            code: "bad-json",
        },
        Case {
            name: "JSON without token",
            path: "/v1/sign",
            auth: None,
            body: br#"{"csr":"x"}"#.to_vec(),
            status: 400,
            code: "bad-json",
        },
        Case {
            name: "unknown field",
            path: "/v1/sign",
            auth: None,
            body: br#"{"csr":"x","token":"y","admin":true}"#.to_vec(),
            status: 400,
            code: "bad-json",
        },
        Case {
            name: "CSR not PEM",
            path: "/v1/sign",
            auth: None,
            body: sign_body("hello", &fresh().await),
            status: 400,
            code: "bad-csr",
        },
        Case {
            name: "CSR PEM of garbage",
            path: "/v1/sign",
            auth: None,
            body: sign_body(
                &sigil::pem::encode("CERTIFICATE REQUEST", b"garbage"),
                &fresh().await,
            ),
            status: 400,
            code: "bad-csr",
        },
        Case {
            name: "CSR with broken signature",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&tampered, &fresh().await),
            status: 400,
            code: "bad-csr-signature",
        },
        Case {
            name: "RSA-1024 key",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&rsa1024, &fresh().await),
            status: 403,
            code: "weak-key",
        },
        Case {
            name: "P-521 key",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&p521, &fresh().await),
            status: 403,
            code: "weak-key",
        },
        Case {
            name: "SHA-1 signed CSR",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&sha1, &fresh().await),
            status: 403,
            code: "weak-signature",
        },
        Case {
            name: "name not in token",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&other_name, &fresh().await),
            status: 403,
            code: "name-not-in-token",
        },
        Case {
            name: "wildcard name",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&wildcard, &wildcard_token),
            status: 403,
            code: "wildcard-not-allowed",
        },
        Case {
            name: "replayed token",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, &replayed),
            status: 401,
            code: "token-replayed",
        },
        Case {
            name: "expired token",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, &expired),
            status: 401,
            code: "token-expired",
        },
        Case {
            name: "token signed by another key",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, &forged),
            status: 401,
            code: "bad-token",
        },
        Case {
            name: "token from unknown provisioner",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, &unknown),
            status: 401,
            code: "unknown-provisioner",
        },
        Case {
            name: "token for another audience",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, &wrong_aud),
            status: 401,
            code: "bad-token",
        },
        Case {
            name: "alg none",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, &alg_none),
            status: 401,
            code: "bad-token",
        },
        Case {
            name: "alg HS256",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, &hs256),
            status: 401,
            code: "bad-token",
        },
        Case {
            name: "token not a JWT",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, "abc.def"),
            status: 401,
            code: "bad-token",
        },
        Case {
            name: "empty token",
            path: "/v1/sign",
            auth: None,
            body: sign_body(&good_csr, ""),
            status: 401,
            code: "missing-token",
        },
        Case {
            name: "TTL unparseable",
            path: "/v1/sign",
            auth: None,
            body: serde_json::to_vec(
                &json!({"csr": good_csr, "token": fresh().await, "ttl": "soon"}),
            )
            .unwrap(),
            status: 400,
            code: "bad-duration",
        },
        Case {
            name: "TTL above maximum",
            path: "/v1/sign",
            auth: None,
            body: serde_json::to_vec(
                &json!({"csr": good_csr, "token": fresh().await, "ttl": "30d"}),
            )
            .unwrap(),
            status: 403,
            code: "ttl-too-long",
        },
        Case {
            name: "oversized body",
            path: "/v1/sign",
            auth: None,
            body: vec![b'x'; 200 * 1024],
            status: 413,
            code: "body-too-large",
        },
        Case {
            name: "renew without client certificate",
            path: "/v1/renew",
            auth: None,
            body: serde_json::to_vec(&json!({"csr": good_csr})).unwrap(),
            status: 401,
            code: "no-client-certificate",
        },
        Case {
            name: "admin: no key",
            path: "/v1/admin/tokens",
            auth: None,
            body: br#"{"service":"payments"}"#.to_vec(),
            status: 401,
            code: "missing-admin-key",
        },
        Case {
            name: "admin: wrong key",
            path: "/v1/admin/tokens",
            auth: Some("Bearer sigil_admin_000000000000_wrong".into()),
            body: br#"{"service":"payments"}"#.to_vec(),
            status: 401,
            code: "bad-admin-key",
        },
        Case {
            name: "admin: not bearer",
            path: "/v1/admin/tokens",
            auth: Some(format!("Basic {admin}")),
            body: br#"{"service":"payments"}"#.to_vec(),
            status: 401,
            code: "bad-admin-key",
        },
        Case {
            name: "admin: bad identity",
            path: "/v1/admin/tokens",
            auth: Some(format!("Bearer {admin}")),
            body: br#"{"service":"Pay Ments"}"#.to_vec(),
            status: 400,
            code: "bad-identity",
        },
        Case {
            name: "admin: bad SAN",
            path: "/v1/admin/tokens",
            auth: Some(format!("Bearer {admin}")),
            body: br#"{"service":"payments","sans":["b\u00fccher.example"]}"#.to_vec(),
            status: 400,
            code: "bad-name",
        },
        Case {
            name: "admin: wildcard refused at token creation",
            path: "/v1/admin/tokens",
            auth: Some(format!("Bearer {admin}")),
            body: br#"{"service":"payments","sans":["*.internal"]}"#.to_vec(),
            status: 403,
            code: "wildcard-not-allowed",
        },
        Case {
            name: "admin: token TTL too long",
            path: "/v1/admin/tokens",
            auth: Some(format!("Bearer {admin}")),
            body: br#"{"service":"payments","ttl":"48h"}"#.to_vec(),
            status: 403,
            code: "ttl-too-long",
        },
        Case {
            name: "unknown path",
            path: "/v1/nothing",
            auth: None,
            body: b"{}".to_vec(),
            status: 404,
            code: "no-such-endpoint",
        },
    ];

    let http = s.http();
    for case in &cases {
        let mut req = http
            .post(format!("{}{}", s.url, case.path))
            .body(case.body.clone())
            .header("content-type", "application/json");
        if let Some(a) = &case.auth {
            req = req.header("authorization", a);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        common::assert_problem(case.name, resp, case.status, case.code).await;
    }
    // A body declared as something other than JSON is refused as such.
    for ctype in ["application/x-www-form-urlencoded", "text/plain"] {
        let resp = http
            .post(format!("{}/v1/sign", s.url))
            .header("content-type", ctype)
            .body(sign_body(&good_csr, &fresh().await))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 415, "{ctype}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "unsupported-media-type", "{ctype}: {body}");
    }
    // Nothing was left behind, and the server still serves.
    assert_eq!(
        s.count("certificates").await,
        baseline_certs,
        "a refused request wrote a certificate"
    );
    assert_eq!(
        s.count("tokens").await,
        baseline_tokens,
        "a refused request spent a token"
    );
    let health = http.get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{}/readyz", s.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        !s.log_text().contains("panicked"),
        "the server panicked:\n{}",
        s.log_text()
    );
}

async fn token_is_single_use(backend: Backend) {
    let s = Server::start(backend).await;
    let token = s.token("payments", &["payments.internal"]).await;
    let (csr1, _) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["payments.internal"]);
    let (csr2, _) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["payments.internal"]);
    let (a, b) = tokio::join!(s.sign(&csr1, &token, None), s.sign(&csr2, &token, None));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [201, 401],
        "exactly one of two concurrent uses wins: {a:?} {b:?}"
    );
    assert_eq!(s.count("certificates").await, 1);
    assert_eq!(s.count("tokens").await, 1);
}

async fn server_refuses_a_readable_key(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start(backend).await;
    s.stop();
    let key = s.data_dir.join("intermediate.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&s.data_dir)
        .arg("--database-url")
        .arg(&s.database_url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("intermediate.key") && err.contains("chmod 600"),
        "{err}"
    );
    for f in [
        "root.key",
        "intermediate.key",
        "server.key",
        "admin.key",
        "provisioner.key",
    ] {
        if f != "intermediate.key" {
            let mode = std::fs::metadata(s.data_dir.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
}

async fn a_certificate_renews_once(backend: Backend) {
    let s = Server::start(backend).await;
    let token = s.token("payments", &["payments.internal"]).await;
    let (csr, key) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["payments.internal"]);
    let (status, body) = s.sign(&csr, &token, None).await;
    assert_eq!(status, 201, "{body}");
    let as_old = s
        .client()
        .with_identity(body["chain"].as_str().unwrap(), &key)
        .unwrap();
    let renew = |csr: String| {
        let http = as_old.http().clone();
        let url = format!("{}/v1/renew", s.url);
        async move {
            let resp = http
                .post(url)
                .json(&json!({ "csr": csr }))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let first = renew(common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[]).0).await;
    assert_eq!(first.0, 201, "{}", first.1);
    // A copy of the old certificate and key (stolen, or a second instance sharing files)
    // cannot start a second line of renewals.
    let second = renew(common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[]).0).await;
    assert_eq!(second.0, 403, "{}", second.1);
    assert_eq!(second.1["code"], "already-renewed");
    assert_eq!(s.count("certificates").await, 2);
}

on_both_backends!(
    issues_verifiable_certificates,
    csr_without_names_gets_the_token_names,
    bad_inputs_are_refused_cleanly,
    token_is_single_use,
    server_refuses_a_readable_key,
    a_certificate_renews_once,
);
