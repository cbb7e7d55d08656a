//! Keeps api/openapi.json true: every route the router defines is described, every described
//! operation exists, and the running server answers each one (not with "no such endpoint").

mod common;

use std::collections::BTreeSet;

use common::{Backend, Server};

fn spec() -> serde_json::Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/api/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("api/openapi.json is JSON")
}

fn spec_operations() -> BTreeSet<(String, String)> {
    let spec = spec();
    assert_eq!(spec["openapi"], "3.1.0");
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

/// Reads the `.route("PATH", get(..).post(..))` calls of the router's source.
fn router_operations() -> BTreeSet<(String, String)> {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).unwrap();
    let mut ops = BTreeSet::new();
    let compact: String = src.split_whitespace().collect();
    for chunk in compact.split(".route(\"").skip(1) {
        let (path, rest) = chunk.split_once('"').unwrap();
        let call = &rest[..rest.find("))").unwrap_or(rest.len())];
        for method in ["get", "post", "put", "patch", "delete"] {
            if call.contains(&format!("{method}(")) {
                ops.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    assert!(
        ops.len() > 10,
        "the router source could not be read: {ops:?}"
    );
    ops
}

#[test]
fn spec_matches_router() {
    let spec = spec_operations();
    let router = router_operations();
    let undocumented: Vec<_> = router.difference(&spec).collect();
    let missing: Vec<_> = spec.difference(&router).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from api/openapi.json: {undocumented:?}"
    );
    assert!(
        missing.is_empty(),
        "api/openapi.json describes operations the router lacks: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_described_operation_is_served() {
    let s = Server::start(Backend::Sqlite).await;
    let http = s.http();
    for (method, path) in spec_operations() {
        let path = path
            .replace("{serial}", "01")
            .replace("{service}", "payments");
        let req = match method.as_str() {
            "GET" => http.get(format!("{}{path}", s.url)),
            "POST" => http.post(format!("{}{path}", s.url)).body("{}"),
            other => panic!("unexpected method {other}"),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            status != 404 || !body.contains("no-such-endpoint"),
            "{method} {path} is not routed"
        );
        assert_ne!(status, 405, "{method} {path}: method not allowed");
        assert!(status < 500, "{method} {path} answered {status}: {body}");
    }
}
