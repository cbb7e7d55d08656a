//! Several `sigil serve` processes on one PostgreSQL database are one CA: tokens are spent
//! once across all of them, concurrent issuance neither collides nor loses rows, a replica
//! killed mid-load has sent nothing it did not record, revocations reach every replica's
//! CRL within the publish bound, and a database outage is answered 503 and survived.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, PgCluster, Server};
use serde_json::{json, Value};
use sqlx::Row;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// The answer to one request, kept whole so that tests can check status, headers and body.
struct Answer {
    status: u16,
    content_type: String,
    retry_after: Option<String>,
    body: Value,
}

async fn post_sign(http: &reqwest::Client, url: &str, token: &str) -> reqwest::Result<Answer> {
    let (csr, _) = common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &["api.load.internal"]);
    let resp = http
        .post(format!("{url}/v1/sign"))
        .json(&json!({ "csr": csr, "token": token }))
        .send()
        .await?;
    let header = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let retry_after = header(reqwest::header::RETRY_AFTER);
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok(Answer {
        status,
        content_type,
        retry_after,
        body,
    })
}

async fn sign(s: &Server, token: &str) -> Answer {
    post_sign(&s.http(), &s.url, token)
        .await
        .expect("sign request")
}

async fn tokens(s: &Server, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(s.token("load", &["api.load.internal"]).await);
    }
    out
}

/// Every certificate serial recorded in the database.
async fn recorded_serials(database_url: &str) -> HashSet<String> {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(database_url)
        .await
        .expect("connecting to the test database");
    sqlx::query("SELECT serial FROM certificates")
        .fetch_all(&mut conn)
        .await
        .expect("reading serials")
        .iter()
        .map(|r| r.try_get::<String, _>("serial").expect("serial"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_spent_once_across_replicas() {
    let a = Server::start(Backend::Postgres).await;
    let b = a.replica().await;

    // Minted at one replica, honoured at the other, then refused at both.
    for (mint, spend, other) in [(&a, &b, &a), (&b, &a, &b)] {
        let token = mint.token("load", &["api.load.internal"]).await;
        let first = sign(spend, &token).await;
        assert_eq!(first.status, 201, "{}", first.body);
        for replay_at in [spend, other] {
            let again = sign(replay_at, &token).await;
            assert_eq!(again.status, 401, "{}", again.body);
            assert_eq!(again.body["code"], "token-replayed", "{}", again.body);
            assert_eq!(again.content_type, "application/problem+json");
        }
    }
    assert_eq!(a.count("certificates").await, 2);
    assert_eq!(a.count("tokens").await, 2);

    // The same token sent to both replicas at the same moment buys exactly one certificate.
    for token in tokens(&a, 10).await {
        let (x, y) = tokio::join!(sign(&a, &token), sign(&b, &token));
        let mut statuses = [x.status, y.status];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 401], "{} / {}", x.body, y.body);
    }
    assert_eq!(a.count("certificates").await, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_issuance_over_two_replicas() {
    let a = Server::start(Backend::Postgres).await;
    let b = a.replica().await;
    let tokens = tokens(&a, 100).await;

    let mut tasks = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let target = if i % 2 == 0 { &a } else { &b };
        let (http, url) = (target.http(), target.url.clone());
        tasks.push(tokio::spawn(async move {
            post_sign(&http, &url, &token).await.expect("sign request")
        }));
    }
    let mut serials = HashSet::new();
    for t in tasks {
        let answer = t.await.expect("task");
        assert_eq!(answer.status, 201, "{}", answer.body);
        let serial = answer.body["serial"].as_str().expect("serial").to_owned();
        assert!(serials.insert(serial), "a serial was issued twice");
    }
    assert_eq!(serials.len(), 100);
    assert_eq!(a.count("certificates").await, 100);
    assert_eq!(recorded_serials(&a.database_url).await, serials);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_sent_only_recorded_certificates() {
    let a = Server::start(Backend::Postgres).await;
    let b = a.replica().await;
    let queue = Arc::new(Mutex::new(tokens(&a, 240).await));
    let received = Arc::new(Mutex::new(Vec::<(usize, String)>::new()));

    // Eight clients, four per replica, each taking the next token until none are left.
    let mut workers = Vec::new();
    for w in 0..8 {
        let target = if w % 2 == 0 { &a } else { &b };
        let (http, url) = (target.http(), target.url.clone());
        let (queue, received) = (queue.clone(), received.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(token) = queue.lock().unwrap().pop() else {
                    return;
                };
                // A request cut off by the kill fails here; its client then stops, leaving the
                // remaining tokens to the live replica.
                let Ok(answer) = post_sign(&http, &url, &token).await else {
                    return;
                };
                if answer.status == 201 {
                    let serial = answer.body["serial"].as_str().expect("serial");
                    received.lock().unwrap().push((w % 2, serial.to_owned()));
                }
            }
        }));
    }
    // Kill replica b once it is busy, with no chance to finish anything in flight.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received
        .lock()
        .unwrap()
        .iter()
        .filter(|(r, _)| *r == 1)
        .count()
        < 20
    {
        assert!(Instant::now() < deadline, "replica b issued nothing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.signal("KILL");
    let at_kill = received.lock().unwrap().len();
    for w in workers {
        w.await.expect("worker");
    }

    let received = received.lock().unwrap().clone();
    eprintln!(
        "kill: {} certificates received, {} of them from b, {} after the kill",
        received.len(),
        received.iter().filter(|(r, _)| *r == 1).count(),
        received.len() - at_kill
    );
    assert!(
        received.len() > at_kill,
        "replica a stopped issuing when b was killed"
    );
    let recorded = recorded_serials(&a.database_url).await;
    for (_, serial) in &received {
        assert!(
            recorded.contains(serial),
            "certificate {serial} reached a client but has no row"
        );
    }
    // Nothing was answered twice for one serial, and a's answers kept coming after the kill.
    let distinct: HashSet<_> = received.iter().map(|(_, s)| s).collect();
    assert_eq!(distinct.len(), received.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_identity_races_issuance_at_both_replicas() {
    let a = Server::start(Backend::Postgres).await;
    let b = a.replica().await;
    let queue = Arc::new(Mutex::new(tokens(&a, 200).await));
    let revoked_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    // (sent at, status, problem code or serial)
    let results = Arc::new(Mutex::new(Vec::<(Instant, u16, String)>::new()));

    let mut workers = Vec::new();
    for w in 0..8 {
        let target = if w % 2 == 0 { &a } else { &b };
        let (http, url) = (target.http(), target.url.clone());
        let (queue, results) = (queue.clone(), results.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let Some(token) = queue.lock().unwrap().pop() else {
                    return;
                };
                let sent = Instant::now();
                let answer = post_sign(&http, &url, &token).await.expect("sign request");
                let what = match answer.status {
                    201 => answer.body["serial"].as_str().expect("serial").to_owned(),
                    _ => answer.body["code"].as_str().unwrap_or_default().to_owned(),
                };
                results.lock().unwrap().push((sent, answer.status, what));
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while results.lock().unwrap().len() < 40 {
        assert!(Instant::now() < deadline, "no issuance under way");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = a
        .http()
        .post(format!("{}/v1/admin/services/load/revoke", a.url))
        .bearer_auth(a.admin_key())
        .json(&json!({ "reason": "keyCompromise" }))
        .send()
        .await
        .expect("identity revocation");
    *revoked_at.lock().unwrap() = Some(Instant::now());
    assert_eq!(resp.status(), 200);
    let revoked = resp.json::<Value>().await.expect("json")["revoked"]
        .as_u64()
        .expect("revoked count");
    for w in workers {
        w.await.expect("worker");
    }

    // Each issuance committed either before the revocation, which then revoked it, or after,
    // when it saw the identity disabled. No active certificate is left behind.
    let answered = revoked_at.lock().unwrap().expect("revocation time");
    let results = results.lock().unwrap().clone();
    let issued: Vec<&String> = results
        .iter()
        .filter(|(_, status, _)| *status == 201)
        .map(|(_, _, serial)| serial)
        .collect();
    for (sent, status, what) in &results {
        match status {
            201 => assert!(
                *sent < answered,
                "certificate {what} issued after the revocation"
            ),
            403 => assert_eq!(what, "identity-disabled"),
            other => panic!("unexpected answer {other} {what}"),
        }
    }
    assert!(
        issued.len() >= 40 && issued.len() < results.len(),
        "{}",
        issued.len()
    );
    assert_eq!(
        revoked,
        issued.len() as u64,
        "the revocation missed certificates"
    );
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&a.database_url)
        .await
        .expect("db");
    let active: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM certificates WHERE identity = 'load' AND status = 'active'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count")
    .try_get("n")
    .expect("n");
    assert_eq!(active, 0);
}

/// The CRL number and serials of the intermediate CRL a replica serves now.
async fn served_crl(s: &Server) -> (u64, HashSet<String>) {
    let der = s
        .http()
        .get(format!("{}/v1/crl", s.url))
        .send()
        .await
        .expect("crl request")
        .bytes()
        .await
        .expect("crl body");
    let (_, crl) = CertificateRevocationList::from_der(&der).expect("parsing the served CRL");
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .expect("CRL number");
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| sigil::names::Serial::from_be_bytes(r.raw_serial()).to_string())
        .collect();
    (number, serials)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_other_replica_crl_in_time() {
    const PUBLISH_DELAY: Duration = Duration::from_secs(3);
    // How often this test looks: the measured delay may be late by this much.
    const POLL: Duration = Duration::from_millis(100);
    let a = Server::start_with(Backend::Postgres, &["--crl-publish-delay", "3s"]).await;
    let b = a.replica().await;

    // Watch the CRL numbers both replicas serve, for the whole test.
    let seen: Arc<Mutex<HashMap<usize, Vec<u64>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let replicas = [(a.http(), a.url.clone()), (b.http(), b.url.clone())];
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, (http, url)) in replicas.iter().enumerate() {
                    let der = http.get(format!("{url}/v1/crl")).send().await;
                    let Ok(der) = der else { continue };
                    let der = der.bytes().await.expect("crl body");
                    let (_, crl) = CertificateRevocationList::from_der(&der).expect("crl");
                    let n = crl.crl_number().and_then(|n| u64::try_from(n).ok());
                    seen.lock()
                        .unwrap()
                        .entry(i)
                        .or_default()
                        .push(n.expect("number"));
                }
                tokio::time::sleep(POLL).await;
            }
        })
    };

    for round in 0..3 {
        let token = a.token("load", &["api.load.internal"]).await;
        let issued = sign(&a, &token).await;
        assert_eq!(issued.status, 201, "{}", issued.body);
        let serial = issued.body["serial"].as_str().expect("serial").to_owned();
        // Alternate the replica that takes the revocation.
        let (revoker, other) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let (before, listed) = served_crl(other).await;
        assert!(!listed.contains(&serial));

        let resp = revoker
            .http()
            .post(format!(
                "{}/v1/admin/certificates/{serial}/revoke",
                revoker.url
            ))
            .bearer_auth(revoker.admin_key())
            .json(&json!({ "reason": "keyCompromise" }))
            .send()
            .await
            .expect("revoke");
        assert_eq!(resp.status(), 200);
        let revoked_at = Instant::now();
        loop {
            let (number, listed) = served_crl(other).await;
            if listed.contains(&serial) {
                assert!(number > before, "a CRL listing a new entry kept its number");
                eprintln!(
                    "round {round}: CRL {number} at the other replica lists the revocation \
                     after {:?}",
                    revoked_at.elapsed()
                );
                break;
            }
            assert!(
                revoked_at.elapsed() <= PUBLISH_DELAY + POLL,
                "round {round}: the other replica's CRL lacks {serial} after {:?}",
                revoked_at.elapsed()
            );
            tokio::time::sleep(POLL).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.await.expect("watcher");

    let seen = seen.lock().unwrap().clone();
    for (replica, numbers) in &seen {
        assert!(numbers.len() > 10, "replica {replica}: too few samples");
        assert!(
            numbers.windows(2).all(|w| w[0] <= w[1]),
            "replica {replica} served a CRL number lower than one it served before: {numbers:?}"
        );
    }
    // Both end up serving the newest CRL.
    let deadline = Instant::now() + PUBLISH_DELAY;
    loop {
        let (x, y) = (served_crl(&a).await.0, served_crl(&b).await.0);
        if x == y {
            break;
        }
        assert!(Instant::now() < deadline, "replicas serve CRL {x} and {y}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_answered_503_and_survived() {
    let cluster = PgCluster::create(&["-c", "fsync=off"]).expect("starting a PostgreSQL cluster");
    let database_url = common::create_database(&cluster.url).await;
    let s = Server::start_on(&database_url, &[]).await;
    let queue = Arc::new(Mutex::new(tokens(&s, 400).await));
    let answers = Arc::new(Mutex::new(Vec::<(String, Answer)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Four clients issue without pause; a fifth watches /readyz.
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (http, url) = (s.http(), s.url.clone());
        let (queue, answers, stop) = (queue.clone(), answers.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(token) = queue.lock().unwrap().pop() else {
                    return;
                };
                let answer = post_sign(&http, &url, &token).await.expect("sign request");
                answers.lock().unwrap().push((token, answer));
            }
        }));
    }
    let readiness = Arc::new(Mutex::new(Vec::<u16>::new()));
    let ready_watch = {
        let (http, url) = (s.http(), s.url.clone());
        let (readiness, stop) = (readiness.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = http.get(format!("{url}/readyz")).send().await;
                let status = resp.expect("readyz request").status().as_u16();
                {
                    let mut r = readiness.lock().unwrap();
                    if r.last() != Some(&status) {
                        r.push(status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let count = |status: u16| {
        let answers = answers.clone();
        move || {
            answers
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, a)| a.status == status)
                .count()
        }
    };
    let created = count(201);
    let wait_for = |what: &'static str, cond: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };

    wait_for(
        "issuance before the outage",
        Box::new(move || created() >= 20),
    )
    .await;
    tokio::task::block_in_place(|| cluster.stop()).expect("stopping PostgreSQL");
    let c503 = count(503);
    wait_for("503s during the outage", Box::new(move || c503() >= 8)).await;
    let r = readiness.clone();
    wait_for(
        "/readyz to fail",
        Box::new(move || r.lock().unwrap().last() == Some(&503)),
    )
    .await;
    let created_in_outage = count(201)();
    tokio::task::block_in_place(|| cluster.start()).expect("starting PostgreSQL again");
    let r = readiness.clone();
    wait_for(
        "/readyz to recover",
        Box::new(move || r.lock().unwrap().last() == Some(&200)),
    )
    .await;
    let created_now = count(201);
    wait_for(
        "issuance after the outage",
        Box::new(move || created_now() >= created_in_outage + 20),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    ready_watch.await.expect("readiness watcher");

    // Every answer was a certificate or a 503 problem with Retry-After; never a 500.
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let mut refused = Vec::new();
    for (token, a) in &answers {
        match a.status {
            201 => {}
            503 => {
                assert_eq!(a.content_type, "application/problem+json", "{}", a.body);
                let retry_after = a.retry_after.as_deref().and_then(|v| v.parse::<u32>().ok());
                assert!(
                    retry_after.is_some_and(|secs| secs > 0),
                    "503 without Retry-After: {}",
                    a.body
                );
                assert_eq!(a.body["status"], 503);
                refused.push(token.clone());
            }
            other => panic!("a request during the outage got {other}: {}", a.body),
        }
    }
    eprintln!(
        "outage: {} answers, {} of them 503; /readyz went {:?}",
        answers.len(),
        refused.len(),
        readiness.lock().unwrap()
    );
    assert_eq!(readiness.lock().unwrap().first(), Some(&200));
    assert!(readiness.lock().unwrap().contains(&503));

    // A request that failed spent nothing: each of those tokens still buys a certificate.
    for token in &refused {
        let again = sign(&s, token).await;
        assert_eq!(
            again.status, 201,
            "a token refused with 503 was spent: {}",
            again.body
        );
    }
    let issued = answers.iter().filter(|(_, a)| a.status == 201).count() + refused.len();
    assert_eq!(s.count("certificates").await, issued as i64);

    let log = s.log_text();
    eprintln!("{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("internal error"), "{log}");
    let mut s = s;
    assert!(
        s.child
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("wait")
            .is_none(),
        "sigil serve exited during the outage"
    );
}
