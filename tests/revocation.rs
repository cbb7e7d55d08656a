//! Revocation end to end: the admin API and the `sigil` command revoke certificates and whole
//! identities, the served CRLs list them within the configured bound, and real peers (the
//! openssl CLI, a rustls verifier, the CA's own TLS listener) refuse them while still
//! accepting their siblings.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Backend, Server};
use serde_json::{json, Value};
use sigil::names::Serial;

/// The CRL publish delay the tests start the server with: the bound a revocation must meet.
const PUBLISH_DELAY: Duration = Duration::from_secs(1);
/// Allowance on top of the bound for a two-core test machine shared with other builds: the
/// publisher itself needs about a fifth of the delay plus a few milliseconds of signing.
const SLACK: Duration = Duration::from_secs(2);

async fn start(backend: Backend) -> Server {
    Server::start_with(backend, &["--crl-publish-delay", "1s"]).await
}

/// A certificate the test holds, with its key.
struct Leaf {
    serial: String,
    /// Leaf then intermediate, PEM.
    chain: String,
    key: String,
}

async fn sign(s: &Server, service: &str, token: &str) -> (u16, Value) {
    let name = format!("{service}.internal");
    let (csr, _) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[&name]);
    s.sign(&csr, token, None).await
}

/// Asks to renew over a new mTLS connection presenting `leaf`, with a fresh CSR for
/// payments.internal.
async fn renew_as(s: &Server, leaf: &Leaf) -> reqwest::Result<reqwest::Response> {
    let (csr, _) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["payments.internal"]);
    s.client()
        .with_identity(&leaf.chain, &leaf.key)
        .unwrap()
        .http()
        .post(format!("{}/v1/renew", s.url))
        .json(&json!({ "csr": csr }))
        .send()
        .await
}

async fn issue(s: &Server, service: &str) -> Leaf {
    let name = format!("{service}.internal");
    let token = s.token(service, &[&name]).await;
    let (csr, key) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[&name]);
    let resp = s
        .http()
        .post(format!("{}/v1/sign", s.url))
        .json(&json!({ "csr": csr, "token": token }))
        .send()
        .await
        .expect("sign request");
    assert_eq!(resp.status(), 201, "issuing for {service}");
    let body: Value = resp.json().await.unwrap();
    Leaf {
        serial: body["serial"].as_str().unwrap().to_owned(),
        chain: body["chain"].as_str().unwrap().to_owned(),
        key,
    }
}

async fn admin(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let http = s.http();
    let url = format!("{}{path}", s.url);
    let req = match method {
        "GET" => http.get(url),
        _ => http.post(url),
    };
    let mut req = req.bearer_auth(s.admin_key());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn revoke(s: &Server, serial: &str, reason: &str) -> Value {
    let (status, body) = admin(
        s,
        "POST",
        &format!("/v1/admin/certificates/{serial}/revoke"),
        Some(json!({ "reason": reason })),
    )
    .await;
    assert_eq!(status, 200, "revoking {serial}: {body}");
    body
}

/// What the tests read out of a CRL.
#[derive(Debug)]
struct CrlView {
    number: u64,
    this_update: i64,
    next_update: i64,
    /// (serial, revocation date, reason name or None)
    entries: Vec<(String, i64, Option<String>)>,
    aki: Option<Vec<u8>>,
    has_idp: bool,
}

impl CrlView {
    fn entry(&self, serial: &str) -> Option<&(String, i64, Option<String>)> {
        self.entries.iter().find(|e| e.0 == serial)
    }
}

/// Parses a CRL and checks its signature against `issuer_pem`'s key.
fn read_crl(der: &[u8], issuer_pem: &str) -> CrlView {
    use x509_parser::extensions::ParsedExtension;
    let (rest, crl) = x509_parser::parse_x509_crl(der).expect("CRL parses");
    assert!(rest.is_empty(), "trailing bytes after the CRL");
    let issuer_der = sigil::pem::decode_all(issuer_pem, "CERTIFICATE")
        .unwrap()
        .remove(0);
    let (_, issuer) = x509_parser::parse_x509_certificate(&issuer_der).unwrap();
    crl.verify_signature(issuer.public_key())
        .expect("CRL signature verifies with the issuer's key");
    assert_eq!(crl.issuer(), issuer.subject(), "CRL issuer is the CA");
    let mut aki = None;
    let mut has_idp = false;
    for ext in crl.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            ParsedExtension::IssuingDistributionPoint(_) => has_idp = true,
            _ => {}
        }
    }
    CrlView {
        number: crl
            .crl_number()
            .expect("CRL has a CRL number")
            .to_string()
            .parse()
            .unwrap(),
        this_update: crl.last_update().timestamp(),
        next_update: crl.next_update().expect("nextUpdate").timestamp(),
        entries: crl
            .iter_revoked_certificates()
            .map(|r| {
                (
                    Serial::from_be_bytes(r.raw_serial()).to_string(),
                    r.revocation_date.timestamp(),
                    r.reason_code().map(|(_, code)| code.to_string()),
                )
            })
            .collect(),
        aki,
        has_idp,
    }
}

fn intermediate_pem(leaf: &Leaf) -> String {
    let ders = sigil::pem::decode_all(&leaf.chain, "CERTIFICATE").unwrap();
    sigil::pem::encode("CERTIFICATE", &ders[1])
}

fn ski_of(pem: &str) -> Vec<u8> {
    let der = sigil::pem::decode_all(pem, "CERTIFICATE")
        .unwrap()
        .remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let ski = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    ski.expect("CA certificate has an SKI")
}

/// Polls the served intermediate CRL until `accept` holds, within the publish bound plus
/// slack. Returns the CRL and how long it took.
async fn wait_for_crl(
    s: &Server,
    issuer_pem: &str,
    what: &str,
    accept: impl Fn(&CrlView) -> bool,
) -> (CrlView, Duration) {
    let started = Instant::now();
    let deadline = started + PUBLISH_DELAY + SLACK;
    loop {
        let crl = read_crl(&s.get_ok("/v1/crl").await, issuer_pem);
        if accept(&crl) {
            return (crl, started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not in the served CRL within {:?}: {crl:?}",
            PUBLISH_DELAY + SLACK
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until_listed(s: &Server, issuer_pem: &str, serial: &str) -> (CrlView, Duration) {
    wait_for_crl(s, issuer_pem, &format!("revocation of {serial}"), |c| {
        c.entry(serial).is_some()
    })
    .await
}

/// `openssl verify -crl_check_all` of a leaf against the bundle and the served crls.pem.
fn openssl_verify(dir: &Path, bundle: &str, crls_pem: &[u8], leaf: &Leaf) -> (bool, String) {
    let bundle_path = dir.join("bundle.pem");
    let crls_path = dir.join("crls.pem");
    let chain_path = dir.join(format!("{}.pem", leaf.serial));
    std::fs::write(&bundle_path, bundle).unwrap();
    std::fs::write(&crls_path, crls_pem).unwrap();
    std::fs::write(&chain_path, &leaf.chain).unwrap();
    common::run(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(&bundle_path)
            .arg("-untrusted")
            .arg(&chain_path)
            .arg("-crl_check_all")
            .arg("-CRLfile")
            .arg(&crls_path)
            .arg(&chain_path),
    )
}

/// What a rustls server would say of `leaf` as a client certificate, given the bundle and
/// both CRLs.
fn rustls_verdict(bundle: &str, crls: &[Vec<u8>], leaf: &Leaf) -> Result<(), rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls(
        crls.iter()
            .map(|d| CertificateRevocationListDer::from(d.clone())),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(leaf.chain.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

async fn revoked_certificate_is_refused_by_peers(backend: Backend) {
    let s = start(backend).await;
    let work = tempfile::tempdir().unwrap();
    let revoked = issue(&s, "payments").await;
    let sibling = issue(&s, "payments").await;
    let bundle = s.get_text("/v1/bundle").await;
    let int_pem = intermediate_pem(&revoked);
    let before = read_crl(&s.get_ok("/v1/crl").await, &int_pem);
    assert!(before.entries.is_empty(), "{before:?}");

    // Before the revocation both verify everywhere.
    let crls_pem = s.get_ok("/v1/crls.pem").await;
    for leaf in [&revoked, &sibling] {
        let (ok, out) = openssl_verify(work.path(), &bundle, &crls_pem, leaf);
        assert!(ok, "openssl verify before revocation: {out}");
    }

    let record = revoke(&s, &revoked.serial, "keyCompromise").await;
    assert_eq!(record["status"], "revoked");
    assert_eq!(record["revocation_reason"], "keyCompromise");
    let revoked_at = time::OffsetDateTime::parse(
        record["revoked_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp();

    // The intermediate CRL lists it, with reason and date, under a larger CRL number.
    let (crl, took) = wait_until_listed(&s, &int_pem, &revoked.serial).await;
    eprintln!("revocation reached the served CRL after {took:?}");
    assert!(
        crl.number > before.number,
        "{} > {}",
        crl.number,
        before.number
    );
    let entry = crl.entry(&revoked.serial).unwrap();
    assert_eq!(
        entry.1, revoked_at,
        "CRL revocation date is the recorded one"
    );
    assert_eq!(entry.2.as_deref(), Some("KeyCompromise"));
    assert!(crl.entry(&sibling.serial).is_none());
    assert_eq!(
        crl.aki,
        Some(ski_of(&int_pem)),
        "AKI names the intermediate"
    );
    assert_eq!(crl.next_update - crl.this_update, 24 * 3600);

    // The root CRL: signed by the root, no IDP (openssl -crl_check_all needs that), empty.
    let root_crl = read_crl(&s.get_ok("/v1/crl/root").await, &bundle);
    assert!(!root_crl.has_idp, "root CRL must not carry an IDP");
    assert!(root_crl.entries.is_empty());
    assert_eq!(root_crl.aki, Some(ski_of(&bundle)));

    // openssl refuses the revoked certificate, says why, and still accepts the sibling.
    let crls_pem = s.get_ok("/v1/crls.pem").await;
    let (ok, out) = openssl_verify(work.path(), &bundle, &crls_pem, &revoked);
    assert!(!ok, "openssl accepted a revoked certificate: {out}");
    assert!(out.contains("certificate revoked"), "{out}");
    let (ok, out) = openssl_verify(work.path(), &bundle, &crls_pem, &sibling);
    assert!(ok, "openssl refused the sibling: {out}");
    let crls_path = work.path().join("crls.pem");
    let (ok, text) = common::run(
        Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(&crls_path),
    );
    assert!(ok, "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains(&revoked.serial.to_ascii_lowercase()),
        "{text}"
    );

    // A rustls verifier with the bundle and both CRLs agrees.
    let crls = vec![s.get_ok("/v1/crl").await, s.get_ok("/v1/crl/root").await];
    let verdict = rustls_verdict(&bundle, &crls, &revoked);
    assert!(
        matches!(
            verdict,
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))
        ),
        "rustls on the revoked certificate: {verdict:?}"
    );
    rustls_verdict(&bundle, &crls, &sibling).expect("rustls accepts the sibling");
}

async fn revocation_is_idempotent(backend: Backend) {
    let s = start(backend).await;
    let leaf = issue(&s, "billing").await;
    let int_pem = intermediate_pem(&leaf);
    let first = revoke(&s, &leaf.serial, "superseded").await;
    assert_eq!(first["revocation_reason"], "superseded");

    // A second revocation a moment later changes neither date nor reason.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = revoke(&s, &leaf.serial, "cessationOfOperation").await;
    assert_eq!(second["revoked_at"], first["revoked_at"]);
    assert_eq!(second["revocation_reason"], "superseded");

    // Learning later that the key leaked raises the reason, and only the reason.
    let third = revoke(&s, &leaf.serial, "keyCompromise").await;
    assert_eq!(third["revoked_at"], first["revoked_at"]);
    assert_eq!(third["revocation_reason"], "keyCompromise");
    let fourth = revoke(&s, &leaf.serial, "affiliationChanged").await;
    assert_eq!(fourth["revocation_reason"], "keyCompromise");

    let (crl, _) = wait_for_crl(&s, &int_pem, "reason upgrade", |c| {
        c.entry(&leaf.serial)
            .is_some_and(|e| e.2.as_deref() == Some("KeyCompromise"))
    })
    .await;
    let first_at = time::OffsetDateTime::parse(
        first["revoked_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(
        crl.entry(&leaf.serial).unwrap().1,
        first_at.unix_timestamp()
    );

    // The audit trail holds the revocation and the upgrade, not the repeats.
    let (status, audit) = admin(&s, "GET", "/v1/admin/audit", None).await;
    assert_eq!(status, 200);
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["serial"] == leaf.serial.as_str())
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("revoke"))
        .collect();
    assert_eq!(actions, ["revoke-reason-upgrade", "revoke"], "newest first");

    // The record as the admin API shows it agrees; an unknown serial is a clean 404.
    let (status, shown) = admin(
        &s,
        "GET",
        &format!("/v1/admin/certificates/{}", leaf.serial),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(shown["status"], "revoked");
    assert_eq!(shown["revoked_at"], first["revoked_at"]);
    assert!(shown["certificate"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let resp = s
        .http()
        .post(format!("{}/v1/admin/certificates/7e57ab1e/revoke", s.url))
        .bearer_auth(s.admin_key())
        .json(&json!({ "reason": "keyCompromise" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "unknown-serial", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("7e57ab1e"));
}

async fn identity_kill_switch(backend: Backend) {
    let s = start(backend).await;
    let a = issue(&s, "payments").await;
    let b = issue(&s, "payments").await;
    let already = issue(&s, "payments").await;
    let other = issue(&s, "billing").await;
    revoke(&s, &already.serial, "superseded").await;
    let int_pem = intermediate_pem(&a);

    let (status, body) = admin(
        &s,
        "POST",
        "/v1/admin/services/payments/revoke",
        Some(json!({ "reason": "keyCompromise" })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], 2, "the two active ones: {body}");
    assert_eq!(body["enabled"], false);

    // Every certificate of the identity is revoked, with the reason raised where it was
    // already revoked; the other identity is untouched.
    let (_, listed) = admin(
        &s,
        "GET",
        "/v1/admin/certificates?service=payments&status=active",
        None,
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");
    let (_, listed) = admin(
        &s,
        "GET",
        "/v1/admin/certificates?service=payments&status=revoked",
        None,
    )
    .await;
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{listed}");
    assert!(items
        .iter()
        .all(|c| c["revocation_reason"] == "keyCompromise"));
    let (_, billing) = admin(
        &s,
        "GET",
        &format!("/v1/admin/certificates/{}", other.serial),
        None,
    )
    .await;
    assert_eq!(billing["status"], "active");
    let (crl, _) = wait_for_crl(&s, &int_pem, "identity revocation", |c| {
        [&a, &b, &already].iter().all(|l| {
            c.entry(&l.serial)
                .is_some_and(|e| e.2.as_deref() == Some("KeyCompromise"))
        })
    })
    .await;
    assert!(crl.entry(&other.serial).is_none());

    // The API makes no token for a disabled identity.
    let (status, body) = admin(
        &s,
        "POST",
        "/v1/admin/tokens",
        Some(json!({ "service": "payments", "sans": ["payments.internal"] })),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (403, &json!("identity-disabled")),
        "{body}"
    );
    // A token made before the kill switch gets nothing either, and the refusal spends nothing.
    let token = s.offline_token("payments", &["payments.internal"]);
    let tokens_before = s.count("tokens").await;
    let certs_before = s.count("certificates").await;
    let (status, problem) = sign(&s, "payments", &token).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["code"], "identity-disabled");
    assert_eq!(s.count("tokens").await, tokens_before);
    assert_eq!(s.count("certificates").await, certs_before);
    // Nor by renewal with a certificate it still holds.
    if let Ok(resp) = renew_as(&s, &a).await {
        assert_eq!(resp.status(), 403, "renewal of a revoked certificate");
    }
    // Other identities still get certificates.
    let (status, _) = sign(
        &s,
        "billing",
        &s.token("billing", &["billing.internal"]).await,
    )
    .await;
    assert_eq!(status, 201);

    // Revoking again finds nothing more to revoke; enable lets the same token through.
    let (status, body) = admin(&s, "POST", "/v1/admin/services/payments/revoke", None).await;
    assert_eq!((status, &body["revoked"]), (200, &json!(0)), "{body}");
    let (status, body) = admin(&s, "POST", "/v1/admin/services/payments/enable", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enabled"], true);
    let (status, issued) = sign(&s, "payments", &token).await;
    assert_eq!(status, 201, "{issued}");
    let (_, shown) = admin(
        &s,
        "GET",
        &format!("/v1/admin/certificates/{}", a.serial),
        None,
    )
    .await;
    assert_eq!(shown["status"], "revoked", "enable does not unrevoke");

    let (_, audit) = admin(&s, "GET", "/v1/admin/audit?limit=10", None).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"revoke-identity") && actions.contains(&"enable-identity"),
        "{actions:?}"
    );
}

async fn crl_documents_are_cacheable(backend: Backend) {
    let s = start(backend).await;
    let http = s.http();
    let paths = [
        ("/v1/crl", "application/pkix-crl"),
        ("/v1/crl/root", "application/pkix-crl"),
        ("/v1/crls.pem", "application/x-pem-file"),
        ("/v1/crl?format=pem", "application/x-pem-file"),
        ("/v1/bundle", "application/pem-certificate-chain"),
    ];
    let mut etags = Vec::new();
    for (path, ctype) in paths {
        let resp = http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["content-type"], ctype, "{path}");
        let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
        let cache = resp.headers()["cache-control"].to_str().unwrap().to_owned();
        assert!(
            etag.starts_with('"') && etag.ends_with('"'),
            "{path}: {etag}"
        );
        assert!(cache.contains("max-age="), "{path}: {cache}");
        for presented in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
            let again = http
                .get(format!("{}{path}", s.url))
                .header("if-none-match", &presented)
                .send()
                .await
                .unwrap();
            assert_eq!(again.status(), 304, "{path} with If-None-Match {presented}");
            assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
            assert!(again.bytes().await.unwrap().is_empty());
        }
        let stale = http
            .get(format!("{}{path}", s.url))
            .header("if-none-match", "\"not-this-one\"")
            .send()
            .await
            .unwrap();
        assert_eq!(stale.status(), 200, "{path}");
        etags.push((path, etag));
    }

    // PEM and DER are the same CRL.
    for path in ["/v1/crl", "/v1/crl/root"] {
        let der = s.get_ok(path).await;
        let pem = s.get_text(&format!("{path}?format=pem")).await;
        assert_eq!(
            sigil::pem::decode_all(&pem, "X509 CRL").unwrap(),
            vec![der.clone()],
            "{path}"
        );
        assert_eq!(s.get_ok(&format!("{path}?format=der")).await, der);
    }
    let crls = s.get_text("/v1/crls.pem").await;
    assert_eq!(sigil::pem::decode_all(&crls, "X509 CRL").unwrap().len(), 2);

    for bad in [
        "/v1/crl?format=xml",
        "/v1/crl/root?format=PEM2",
        "/v1/crl?colour=red",
    ] {
        let resp = http.get(format!("{}{bad}", s.url)).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "{bad}"
        );
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], "bad-query", "{bad}: {problem}");
    }

    // A revocation changes the CRL ETags, so caches holding the old one fetch the new one;
    // the bundle's stays.
    let leaf = issue(&s, "payments").await;
    revoke(&s, &leaf.serial, "keyCompromise").await;
    wait_until_listed(&s, &intermediate_pem(&leaf), &leaf.serial).await;
    for (path, old) in &etags {
        let resp = http
            .get(format!("{}{path}", s.url))
            .header("if-none-match", old)
            .send()
            .await
            .unwrap();
        let expect = if *path == "/v1/bundle" { 304 } else { 200 };
        assert_eq!(resp.status(), expect, "{path} after a revocation");
    }
}

async fn revoked_client_certificate_is_refused_over_tls(backend: Backend) {
    let s = start(backend).await;
    let leaf = issue(&s, "payments").await;
    let sibling = issue(&s, "payments").await;
    let int_pem = intermediate_pem(&leaf);
    let as_client = |l: &Leaf| s.client().with_identity(&l.chain, &l.key).unwrap();
    let healthz = format!("{}/healthz", s.url);

    // Before the revocation the certificate is accepted at the TLS layer and renews.
    let resp = as_client(&leaf).http().get(&healthz).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = renew_as(&s, &sibling).await.unwrap();
    assert_eq!(resp.status(), 201, "renewal of a good certificate");

    revoke(&s, &leaf.serial, "keyCompromise").await;
    wait_until_listed(&s, &int_pem, &leaf.serial).await;

    // Once renewal's check has the new CRL, the refusal names the CRL: it comes from the
    // served CRL, not only from the database. A fresh client each time: no reused connection.
    let deadline = Instant::now() + SLACK;
    loop {
        let resp = renew_as(&s, &leaf).await.unwrap();
        assert_eq!(resp.status(), 403, "renewal with a revoked certificate");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "certificate-revoked", "{body}");
        if body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("CRL number")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "renewal's CRL check never saw the new CRL: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The listener itself still accepts the connection, so the client gets an answer it can
    // act on rather than a failed handshake.
    let resp = as_client(&leaf).http().get(&healthz).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The sibling still gets through.
    let resp = as_client(&sibling).http().get(&healthz).send().await;
    assert_eq!(resp.expect("sibling connects").status(), 200);
}

async fn crl_number_only_grows(backend: Backend) {
    // A short validity makes the scheduled rebuild, at half of it, observable.
    let mut s = Server::start_with(
        backend,
        &["--crl-publish-delay", "1s", "--crl-validity", "4s"],
    )
    .await;
    let leaf = issue(&s, "payments").await;
    let int_pem = intermediate_pem(&leaf);
    let first = read_crl(&s.get_ok("/v1/crl").await, &int_pem);
    let first_root = read_crl(&s.get_ok("/v1/crl/root").await, &s.root_pem());
    assert_eq!(first.next_update - first.this_update, 4);

    // Without any revocation, the schedule rebuilds before nextUpdate.
    let started = Instant::now();
    let scheduled = loop {
        let crl = read_crl(&s.get_ok("/v1/crl").await, &int_pem);
        if crl.number > first.number {
            break crl;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2) + SLACK,
            "no scheduled rebuild"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(scheduled.this_update < first.next_update);

    revoke(&s, &leaf.serial, "keyCompromise").await;
    let (listed, _) = wait_until_listed(&s, &int_pem, &leaf.serial).await;
    assert!(listed.number > scheduled.number);

    s.restart().await;
    let after_restart = read_crl(&s.get_ok("/v1/crl").await, &int_pem);
    assert!(
        after_restart.number >= listed.number,
        "{} >= {}",
        after_restart.number,
        listed.number
    );
    assert!(after_restart.entry(&leaf.serial).is_some());
    let other = issue(&s, "payments").await;
    revoke(&s, &other.serial, "superseded").await;
    let (latest, _) = wait_until_listed(&s, &int_pem, &other.serial).await;
    assert!(latest.number > after_restart.number);
    let root = read_crl(&s.get_ok("/v1/crl/root").await, &s.root_pem());
    assert!(
        root.number > first_root.number,
        "the root CRL is rebuilt too"
    );
}

/// Runs `sigil ARGS` against the test server as an operator would.
fn sigil(s: &Server, args: &[&str]) -> (bool, String, String) {
    common::run_split(
        Command::new(common::BIN)
            .args(args)
            .arg("--ca")
            .arg(&s.url)
            .arg("--root")
            .arg(s.root_path())
            .arg("--admin-key-file")
            .arg(s.admin_key_path())
            .env_remove("SIGIL_CA"),
    )
}

async fn command_line_revokes_and_lists(backend: Backend) {
    let s = start(backend).await;
    let a = issue(&s, "payments").await;
    let b = issue(&s, "payments").await;
    let c = issue(&s, "billing").await;

    let (ok, out, err) = sigil(&s, &["certs", "list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "header and three rows:\n{out}");
    for col in [
        "SERIAL", "SERVICE", "STATUS", "EXPIRES", "REVOKED", "REASON",
    ] {
        assert!(lines[0].contains(col), "{out}");
    }
    for leaf in [&a, &b, &c] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&leaf.serial) && l.contains("active")),
            "{out}"
        );
    }

    let (ok, out, err) = sigil(
        &s,
        &["revoke", "--serial", &a.serial, "--reason", "keyCompromise"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("revoked certificate {} (payments)", a.serial))
            && out.contains("keyCompromise"),
        "{out}"
    );
    let (ok, out, _) = sigil(&s, &["revoke", "--serial", &a.serial]);
    assert!(ok);
    assert!(
        out.contains("already revoked") && out.contains("keyCompromise"),
        "{out}"
    );

    let (ok, out, err) = sigil(&s, &["certs", "list", "--status", "revoked", "--json"]);
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).expect("JSON output");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{out}");
    assert_eq!(items[0]["serial"], a.serial.as_str());
    assert_eq!(items[0]["revocation_reason"], "keyCompromise");

    // Paging: one per page shows one row and says more follow; --all follows the cursor.
    let (ok, out, err) = sigil(&s, &["certs", "list", "--limit", "1"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(err.contains("--cursor"), "{err}");
    let (ok, out, err) = sigil(&s, &["certs", "list", "--limit", "1", "--all", "--json"]);
    assert!(ok, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    let mut serials: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["serial"].as_str().unwrap())
        .collect();
    serials.sort();
    let mut want = vec![a.serial.as_str(), b.serial.as_str(), c.serial.as_str()];
    want.sort();
    assert_eq!(serials, want);
    assert_eq!(page["next_cursor"], Value::Null);

    let (ok, out, err) = sigil(&s, &["certs", "show", &a.serial]);
    assert!(ok, "{err}");
    assert!(out.contains("status:") && out.contains("revoked"), "{out}");
    assert!(out.contains("keyCompromise"), "{out}");
    let (ok, out, _) = sigil(&s, &["certs", "show", &b.serial, "--pem"]);
    assert!(
        ok && out.starts_with("-----BEGIN CERTIFICATE-----"),
        "{out}"
    );

    // The kill switch: one command, one active certificate left to revoke, then enable.
    let (ok, out, err) = sigil(
        &s,
        &[
            "revoke",
            "--service",
            "payments",
            "--reason",
            "keyCompromise",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("revoked 1 certificate of payments") && out.contains("sigil enable"),
        "{out}"
    );
    let (ok, out, _) = sigil(
        &s,
        &[
            "certs",
            "list",
            "--service",
            "payments",
            "--status",
            "active",
            "--json",
        ],
    );
    assert!(ok);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{out}");
    let token = s.offline_token("payments", &["payments.internal"]);
    assert_eq!(sign(&s, "payments", &token).await.0, 403);
    let (ok, out, err) = sigil(&s, &["enable", "--service", "payments"]);
    assert!(ok, "{err}");
    assert!(out.contains("enabled payments"), "{out}");
    assert_eq!(sign(&s, "payments", &token).await.0, 201);

    // Mistakes are refused with a message that says what is wrong, and a failing exit.
    let (ok, _, err) = sigil(&s, &["revoke", "--serial", "7e57ab1e"]);
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("no certificate has serial"),
        "{err}"
    );
    let (ok, _, err) = sigil(&s, &["revoke", "--service", "nobody"]);
    assert!(!ok);
    assert!(err.contains("404") && err.contains("nobody"), "{err}");
    let (ok, _, err) = sigil(&s, &["revoke", "--serial", "not-hex"]);
    assert!(!ok);
    assert!(err.contains("hexadecimal"), "{err}");
    let (ok, _, err) = sigil(&s, &["revoke", "--serial", &b.serial, "--reason", "leaked"]);
    assert!(!ok);
    assert!(
        err.contains("keyCompromise"),
        "lists the valid reasons: {err}"
    );
    let (ok, _, err) = sigil(&s, &["revoke"]);
    assert!(!ok);
    assert!(
        err.contains("--serial") && err.contains("--service"),
        "{err}"
    );
    let (ok, _, err) = sigil(
        &s,
        &["revoke", "--serial", &b.serial, "--service", "payments"],
    );
    assert!(!ok, "both targets at once: {err}");
    let (ok, _, err) = sigil(&s, &["certs", "list", "--status", "valid"]);
    assert!(!ok);
    assert!(err.contains("active"), "{err}");
}

/// One bad admin request and what it must get.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    auth: bool,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    body: Option<&[u8]>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        auth: true,
        body: body.map(<[u8]>::to_vec),
        status,
        code,
    }
}

async fn admin_bad_inputs_are_refused_cleanly(backend: Backend) {
    let s = start(backend).await;
    let leaf = issue(&s, "payments").await;
    let revoke_path = format!("/v1/admin/certificates/{}/revoke", leaf.serial);
    let big = vec![b' '; 100 * 1024];
    let mut cases = vec![
        case(
            "bad reason",
            "POST",
            &revoke_path,
            Some(br#"{"reason":"compromised"}"#),
            400,
            "bad-reason",
        ),
        case(
            "reason in the wrong case",
            "POST",
            &revoke_path,
            Some(br#"{"reason":"KeyCompromise"}"#),
            400,
            "bad-reason",
        ),
        case(
            "reason not a string",
            "POST",
            &revoke_path,
            Some(br#"{"reason":1}"#),
            400,
            "bad-json",
        ),
        case(
            "unknown field",
            "POST",
            &revoke_path,
            Some(br#"{"reason":"keyCompromise","when":"now"}"#),
            400,
            "bad-json",
        ),
        case(
            "body not JSON",
            "POST",
            &revoke_path,
            Some(b"reason=keyCompromise"),
            400,
            "bad-json",
        ),
        case(
            "truncated JSON",
            "POST",
            &revoke_path,
            Some(br#"{"reason":"#),
            400,
            "bad-json",
        ),
        case(
            "body too large",
            "POST",
            &revoke_path,
            Some(&big),
            413,
            "body-too-large",
        ),
        case(
            "serial not hex",
            "POST",
            "/v1/admin/certificates/xyz/revoke",
            None,
            400,
            "bad-serial",
        ),
        case(
            "serial longer than 20 octets",
            "POST",
            format!("/v1/admin/certificates/{}/revoke", "f".repeat(41)),
            None,
            400,
            "bad-serial",
        ),
        case(
            "serial zero",
            "POST",
            "/v1/admin/certificates/00/revoke",
            None,
            400,
            "bad-serial",
        ),
        case(
            "unknown serial",
            "POST",
            "/v1/admin/certificates/7e57ab1e/revoke",
            Some(br#"{"reason":"keyCompromise"}"#),
            404,
            "unknown-serial",
        ),
        case(
            "show: serial not hex",
            "GET",
            "/v1/admin/certificates/serial-1",
            None,
            400,
            "bad-serial",
        ),
        case(
            "show: unknown serial",
            "GET",
            "/v1/admin/certificates/7e57ab1e",
            None,
            404,
            "unknown-serial",
        ),
        case(
            "identity: bad name",
            "POST",
            "/v1/admin/services/Pay_Ments/revoke",
            None,
            400,
            "bad-identity",
        ),
        case(
            "identity: unknown",
            "POST",
            "/v1/admin/services/nobody/revoke",
            None,
            404,
            "unknown-identity",
        ),
        case(
            "identity: bad reason",
            "POST",
            "/v1/admin/services/payments/revoke",
            Some(br#"{"reason":"stolen"}"#),
            400,
            "bad-reason",
        ),
        case(
            "identity: bad JSON",
            "POST",
            "/v1/admin/services/payments/revoke",
            Some(b"{reason: keyCompromise}"),
            400,
            "bad-json",
        ),
        case(
            "enable: unknown identity",
            "POST",
            "/v1/admin/services/nobody/enable",
            None,
            404,
            "unknown-identity",
        ),
        case(
            "enable: bad name",
            "POST",
            "/v1/admin/services/-payments/enable",
            None,
            400,
            "bad-identity",
        ),
        case(
            "list: bad status",
            "GET",
            "/v1/admin/certificates?status=valid",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: limit zero",
            "GET",
            "/v1/admin/certificates?limit=0",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: limit too large",
            "GET",
            "/v1/admin/certificates?limit=1001",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: limit not a number",
            "GET",
            "/v1/admin/certificates?limit=ten",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: limit negative",
            "GET",
            "/v1/admin/certificates?limit=-5",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: cursor garbage",
            "GET",
            "/v1/admin/certificates?cursor=garbage",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: cursor with a bad serial",
            "GET",
            "/v1/admin/certificates?cursor=1700000000.xyz",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: cursor with a bad time",
            "GET",
            "/v1/admin/certificates?cursor=soon.7f01",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: unknown parameter",
            "GET",
            "/v1/admin/certificates?colour=red",
            None,
            400,
            "bad-query",
        ),
        case(
            "list: bad service",
            "GET",
            "/v1/admin/certificates?service=Pay%20Ments",
            None,
            400,
            "bad-identity",
        ),
        case(
            "list: bad expires_before",
            "GET",
            "/v1/admin/certificates?expires_before=tomorrow",
            None,
            400,
            "bad-query",
        ),
        case(
            "audit: limit negative",
            "GET",
            "/v1/admin/audit?limit=-1",
            None,
            400,
            "bad-query",
        ),
        case(
            "audit: cursor garbage",
            "GET",
            "/v1/admin/audit?cursor=abc",
            None,
            400,
            "bad-query",
        ),
    ];
    for (name, method, path) in [
        ("no admin key: revoke", "POST", revoke_path.clone()),
        (
            "no admin key: identity",
            "POST",
            "/v1/admin/services/payments/revoke".to_owned(),
        ),
        (
            "no admin key: enable",
            "POST",
            "/v1/admin/services/payments/enable".to_owned(),
        ),
        (
            "no admin key: list",
            "GET",
            "/v1/admin/certificates".to_owned(),
        ),
        ("no admin key: audit", "GET", "/v1/admin/audit".to_owned()),
    ] {
        cases.push(Case {
            auth: false,
            ..case(name, method, path, None, 401, "missing-admin-key")
        });
    }

    let audit_before = s.count("audit_events").await;
    let http = s.http();
    for c in &cases {
        let url = format!("{}{}", s.url, c.path);
        let mut req = match c.method {
            "GET" => http.get(url),
            _ => http.post(url),
        };
        if c.auth {
            req = req.bearer_auth(s.admin_key());
        }
        if let Some(body) = &c.body {
            req = req
                .header("content-type", "application/json")
                .body(body.clone());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        common::assert_problem(c.name, resp, c.status, c.code).await;
    }

    // Nothing changed: the certificate is active, the identity enabled, no audit row written.
    assert_eq!(s.count("audit_events").await, audit_before);
    let (_, shown) = admin(
        &s,
        "GET",
        &format!("/v1/admin/certificates/{}", leaf.serial),
        None,
    )
    .await;
    assert_eq!(shown["status"], "active");
    let (status, _) = sign(
        &s,
        "payments",
        &s.token("payments", &["payments.internal"]).await,
    )
    .await;
    assert_eq!(status, 201, "the identity is still enabled");
    assert!(
        !s.log_text().contains("panicked"),
        "the server panicked:\n{}",
        s.log_text()
    );
}

on_both_backends!(
    revoked_certificate_is_refused_by_peers,
    revocation_is_idempotent,
    identity_kill_switch,
    crl_documents_are_cacheable,
    revoked_client_certificate_is_refused_over_tls,
    crl_number_only_grows,
    command_line_revokes_and_lists,
    admin_bad_inputs_are_refused_cleanly,
);

/// Replicas share one PostgreSQL: a revocation recorded at one is served by the other within
/// the bound, under a larger CRL number drawn from the shared counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_at_one_replica_reaches_the_other() {
    let a = start(Backend::Postgres).await;
    let b = a.replica().await;
    let leaf = issue(&a, "payments").await;
    let int_pem = intermediate_pem(&leaf);
    let before = read_crl(&b.get_ok("/v1/crl").await, &int_pem);
    revoke(&a, &leaf.serial, "keyCompromise").await;
    let (at_b, took) = wait_until_listed(&b, &int_pem, &leaf.serial).await;
    eprintln!("revocation reached the other replica's CRL after {took:?}");
    assert!(at_b.number > before.number);
    let (at_a, _) = wait_until_listed(&a, &int_pem, &leaf.serial).await;
    assert_eq!(
        at_a.entry(&leaf.serial),
        at_b.entry(&leaf.serial),
        "both replicas list the same entry"
    );
}
