//! Issuance records are committed in groups (src/store/group_commit.rs). These tests send
//! bursts of concurrent requests, so that many records share a transaction, and check that a
//! record refused on its own (a replayed token, a disabled identity) is refused with its own
//! problem, leaves no row behind, and does not hold up the records beside it.

mod common;

use common::{Backend, Server};
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// Sends every (CSR, token) at once; returns (status, problem code or serial) in input order.
async fn burst(s: &Server, requests: Vec<(String, String)>) -> Vec<(u16, String)> {
    let mut set = JoinSet::new();
    for (i, (csr, token)) in requests.into_iter().enumerate() {
        let http = s.http();
        let url = format!("{}/v1/sign", s.url);
        set.spawn(async move {
            let resp = http
                .post(url)
                .json(&json!({ "csr": csr, "token": token }))
                .send()
                .await
                .expect("sign request");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let what = body["code"]
                .as_str()
                .or(body["serial"].as_str())
                .unwrap_or_default()
                .to_owned();
            (i, status, what)
        });
    }
    let mut out = vec![(0, String::new()); set.len()];
    while let Some(r) = set.join_next().await {
        let (i, status, what) = r.expect("request task");
        out[i] = (status, what);
    }
    out
}

fn csr(name: &str) -> String {
    common::rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, &[name]).0
}

async fn concurrent_issuances_are_all_recorded(backend: Backend) {
    let s = Server::start(backend).await;
    let mut requests = Vec::new();
    for i in 0..40 {
        let service = format!("svc-{}", i % 7);
        let name = format!("{service}.internal");
        requests.push((csr(&name), s.token(&service, &[&name]).await));
    }
    let out = burst(&s, requests).await;
    assert!(out.iter().all(|(st, _)| *st == 201), "{out:?}");
    let serials: std::collections::HashSet<&String> = out.iter().map(|(_, s)| s).collect();
    assert_eq!(serials.len(), 40, "every issuance has its own serial");
    assert_eq!(s.count("certificates").await, 40);
    assert_eq!(s.count("tokens").await, 40);
}

async fn a_replay_in_a_burst_refuses_only_the_replays(backend: Backend) {
    let s = Server::start(backend).await;
    let reused = s.token("payments", &["payments.internal"]).await;
    // Two of every three requests reuse one token, so that several uses share a group.
    let reuses = |i: &usize| i % 3 != 2;
    let mut requests = Vec::new();
    for i in 0..24 {
        let (token, name) = if reuses(&i) {
            (reused.clone(), "payments.internal")
        } else {
            (
                s.token("billing", &["billing.internal"]).await,
                "billing.internal",
            )
        };
        requests.push((csr(name), token));
    }
    let out = burst(&s, requests).await;
    let (reused_out, others): (Vec<_>, Vec<_>) =
        out.iter().enumerate().partition(|(i, _)| reuses(i));
    let won = reused_out.iter().filter(|(_, (st, _))| *st == 201).count();
    assert_eq!(won, 1, "exactly one use of the token wins: {out:?}");
    for (_, (st, code)) in reused_out.iter().filter(|(_, (st, _))| *st != 201) {
        assert_eq!((*st, code.as_str()), (401, "token-replayed"), "{out:?}");
    }
    assert!(others.iter().all(|(_, (st, _))| *st == 201), "{out:?}");
    assert_eq!(s.count("certificates").await, 9);
    assert_eq!(s.count("tokens").await, 9);
}

async fn a_disabled_identity_in_a_burst_gives_its_tokens_back(backend: Backend) {
    let s = Server::start(backend).await;
    let http = s.http();
    let mut requests = Vec::new();
    let mut disabled_tokens = Vec::new();
    for i in 0..16 {
        let (service, name) = if i % 2 == 0 {
            ("payments", "payments.internal")
        } else {
            ("billing", "billing.internal")
        };
        let token = s.token(service, &[name]).await;
        if i % 2 == 0 {
            disabled_tokens.push(token.clone());
        }
        requests.push((csr(name), token));
    }
    // The identity must exist to be revoked: it gets one certificate first.
    let first = s.token("payments", &["payments.internal"]).await;
    let out = burst(&s, vec![(csr("payments.internal"), first)]).await;
    assert_eq!(out[0].0, 201, "{out:?}");
    let resp = http
        .post(format!("{}/v1/admin/services/payments/revoke", s.url))
        .bearer_auth(s.admin_key())
        .json(&json!({ "reason": "keyCompromise" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let out = burst(&s, requests).await;
    for (i, (st, code)) in out.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!((*st, code.as_str()), (403, "identity-disabled"), "{out:?}");
        } else {
            assert_eq!(*st, 201, "{out:?}");
        }
    }
    // Eight of the burst and the one issued before the revocation.
    assert_eq!(s.count("certificates").await, 9);
    assert_eq!(
        s.count("tokens").await,
        9,
        "refused tokens must not stay spent"
    );

    // Enabled again, the identity gets a certificate with a token refused above.
    let resp = http
        .post(format!("{}/v1/admin/services/payments/enable", s.url))
        .bearer_auth(s.admin_key())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let again = burst(
        &s,
        vec![(csr("payments.internal"), disabled_tokens[0].clone())],
    )
    .await;
    assert_eq!(again[0].0, 201, "{again:?}");
}

on_both_backends!(
    concurrent_issuances_are_all_recorded,
    a_replay_in_a_burst_refuses_only_the_replays,
    a_disabled_identity_in_a_burst_gives_its_tokens_back,
);
