//! The HTTP edge: the only place untrusted bytes enter. Routes, extractors and problem+json
//! mapping live here; every decision is delegated to the authority.

pub mod problem;
pub mod tls;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequest, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::authority::{now_secs, AdminCaller, Authority};
use crate::error::{Error, Kind, Result};
use crate::metrics::Gauges;
use crate::store::CertificateQuery;
use problem::{problem, ProblemCode};

/// Largest request body accepted. A CSR with an RSA-4096 key is about 2 KiB of PEM; a token
/// under 1 KiB.
pub const MAX_BODY: usize = 64 * 1024;
/// Page size of admin listings when `limit` is not given, and the largest allowed.
const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// The TLS client certificate chain of the connection, DER, leaf first. The TLS layer has
/// checked that it leads to the root, not that it is current: it may be expired or revoked,
/// and whoever relies on it must check its status (renewal does, in the database).
#[derive(Clone, Default)]
pub struct PeerChain(pub Option<Arc<Vec<Vec<u8>>>>);

pub type AppState = Arc<Authority>;

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/bundle", get(bundle))
        .route("/v1/crl", get(crl_intermediate))
        .route("/v1/crl/root", get(crl_root))
        .route("/v1/crls.pem", get(crls_pem))
        .route("/v1/sign", post(sign))
        .route("/v1/renew", post(renew))
        .route("/v1/admin/tokens", post(create_token))
        .route("/v1/admin/certificates", get(list_certificates))
        .route("/v1/admin/certificates/{serial}", get(get_certificate))
        .route(
            "/v1/admin/certificates/{serial}/revoke",
            post(revoke_certificate),
        )
        .route("/v1/admin/services/{service}/revoke", post(revoke_service))
        .route("/v1/admin/services/{service}/enable", post(enable_service))
        .route("/v1/admin/audit", get(list_audit))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "no-such-endpoint",
                "no endpoint at this path; see api/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Times every request, bounds it by the request timeout, and counts refusals by code.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let remote = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let timeout = state.settings.request_timeout;
    let resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long; retry later",
        ),
    };
    if let Some(ProblemCode(code)) = resp.extensions().get::<ProblemCode>() {
        state.metrics.refusal(code);
        // Failed authentication and refused authorization are what an operator looks for
        // after a leak: a replayed token, a forged one, a wrong admin key. The detail is not
        // logged, since it may echo what the caller sent.
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            tracing::warn!(
                code = *code,
                status = status.as_u16(),
                route = %route,
                remote = %remote,
                "refused request"
            );
        }
    }
    state.metrics.observe(&route, started.elapsed());
    resp
}

/// Refuses a body declared as something other than JSON. A missing Content-Type is taken
/// as JSON, so that minimal clients keep working.
fn check_json_content_type(headers: &HeaderMap) -> Result<()> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = ct
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let essence = essence.to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        return Ok(());
    }
    Err(Error::new(
        Kind::UnsupportedMediaType,
        "unsupported-media-type",
        format!(
            "request body is declared as {essence:?}; send JSON with \
             Content-Type: application/json (curl: -H 'content-type: application/json')"
        ),
    ))
}

/// A JSON body, read with a size limit, with problem+json answers for every failure.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _: &S) -> Result<Self> {
        check_json_content_type(req.headers())?;
        let bytes = read_body(req).await?;
        if bytes.is_empty() {
            return Err(Error::malformed(
                "bad-json",
                "request body is empty; send a JSON object",
            ));
        }
        parse_json(&bytes).map(JsonBody)
    }
}

/// Reads a whole request body, up to [`MAX_BODY`].
async fn read_body(req: Request) -> Result<axum::body::Bytes> {
    axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            Error::new(
                Kind::TooLarge,
                "body-too-large",
                format!("request body is larger than {} KiB", MAX_BODY / 1024),
            )
        })
}

/// Parses a JSON object into `T`, with a message that names the field at fault.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Error::malformed(
            "bad-json",
            "request body must be a JSON object ({...}); see api/openapi.json for its fields",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        Error::malformed(
            "bad-json",
            format!("request body is not the expected JSON: {e}"),
        )
    })
}

fn parse_query<T: DeserializeOwned + Default>(q: Option<String>) -> Result<T> {
    match q {
        None => Ok(T::default()),
        Some(q) => serde_urlencoded::from_str(&q)
            .map_err(|e| Error::malformed("bad-query", format!("query string: {e}"))),
    }
}

async fn admin(state: &Authority, headers: &HeaderMap) -> Result<AdminCaller> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    state.authenticate_admin(auth).await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => "ready\n".into_response(),
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            &format!("not ready: {}", e.detail),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let (pool_size, pool_idle, pool_max) = state.store.pool_usage();
    let crl = state
        .crl
        .current()
        .map(|p| {
            vec![
                (
                    "intermediate".to_string(),
                    p.intermediate.this_update,
                    p.intermediate.der.len(),
                    p.intermediate.number,
                ),
                (
                    "root".to_string(),
                    p.root.this_update,
                    p.root.der.len(),
                    p.root.number,
                ),
            ]
        })
        .unwrap_or_default();
    let gauges = Gauges {
        crl,
        pool_size,
        pool_idle,
        pool_max,
        ca_not_after: vec![
            ("root".into(), state.ca.root.not_after.unix_timestamp()),
            (
                "intermediate".into(),
                state.ca.intermediate.not_after.unix_timestamp(),
            ),
        ],
        now: now_secs(),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&gauges),
    )
        .into_response()
}

/// Answers a GET for a cacheable document, with ETag and 304 on a matching If-None-Match.
fn cached(
    headers: &HeaderMap,
    etag: &str,
    content_type: &'static str,
    max_age: i64,
    body: Body,
) -> Response {
    // If-None-Match compares weakly (RFC 9110, 13.1.2): a W/ prefix, which compressing
    // proxies add, still matches.
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        });
    let cache = format!("public, max-age={}", max_age.max(0));
    let mut resp = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        r
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
    resp
}

async fn bundle(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let pem = state.ca.bundle_pem.clone();
    let etag = format!("\"{}\"", &crate::ca::sha256_hex(pem.as_bytes())[..32]);
    // The bundle changes only with a new root; an hour of caching is safe.
    cached(
        &headers,
        &etag,
        "application/pem-certificate-chain",
        3600,
        Body::from(pem),
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CrlQuery {
    format: Option<String>,
}

/// Seconds a CRL may be cached: at most five minutes, so that caches pick up a revocation
/// promptly, and never past a little before its nextUpdate.
fn crl_max_age(next_update: i64) -> i64 {
    (next_update - now_secs() - 300).clamp(0, 300)
}

fn no_crl() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "crl-not-ready",
        "no CRL has been published yet; retry shortly",
    )
}

async fn serve_crl(
    state: &Authority,
    headers: &HeaderMap,
    q: Option<String>,
    root: bool,
) -> Response {
    let q: CrlQuery = match parse_query(q) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let Some(p) = state.crl.current() else {
        return no_crl();
    };
    let doc = if root { &p.root } else { &p.intermediate };
    match q.format.as_deref() {
        None | Some("der") => cached(
            headers,
            &doc.etag,
            "application/pkix-crl",
            crl_max_age(doc.next_update),
            Body::from(doc.der.clone()),
        ),
        Some("pem") => {
            let etag = format!("{}-pem\"", doc.etag.trim_end_matches('"'));
            cached(
                headers,
                &etag,
                "application/x-pem-file",
                crl_max_age(doc.next_update),
                Body::from(doc.pem.clone()),
            )
        }
        Some(other) => {
            Error::malformed("bad-query", format!("format {other:?} must be der or pem"))
                .into_response()
        }
    }
}

async fn crl_intermediate(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    serve_crl(&state, &headers, q, false).await
}

async fn crl_root(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    serve_crl(&state, &headers, q, true).await
}

async fn crls_pem(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(p) = state.crl.current() else {
        return no_crl();
    };
    let next = p.intermediate.next_update.min(p.root.next_update);
    cached(
        &headers,
        &p.combined_etag,
        "application/x-pem-file",
        crl_max_age(next),
        Body::from(p.combined_pem.clone()),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    csr: String,
    token: String,
    ttl: Option<String>,
}

fn created<T: Serialize>(v: T) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

async fn sign(State(state): State<AppState>, JsonBody(b): JsonBody<SignBody>) -> Result<Response> {
    let issued = state.sign(b.csr, b.token, b.ttl).await?;
    state.metrics.issuances.fetch_add(1, Ordering::Relaxed);
    Ok(created(issued))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    csr: String,
    ttl: Option<String>,
}

async fn renew(
    State(state): State<AppState>,
    peer: Option<axum::Extension<PeerChain>>,
    JsonBody(b): JsonBody<RenewBody>,
) -> Result<Response> {
    let chain = peer.and_then(|axum::Extension(PeerChain(c))| c);
    let issued = state
        .renew(chain.as_deref().map(|v| v.as_slice()), b.csr, b.ttl)
        .await?;
    state.metrics.renewals.fetch_add(1, Ordering::Relaxed);
    Ok(created(issued))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    service: String,
    #[serde(default)]
    sans: Vec<String>,
    ttl: Option<String>,
}

async fn create_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Request,
) -> Result<Response> {
    // Authenticate before reading the body, so that an unauthenticated caller learns nothing
    // about what a valid body would look like.
    let caller = admin(&state, &headers).await?;
    let JsonBody(b) = JsonBody::<TokenBody>::from_request(body, &()).await?;
    let grant = state
        .create_token(&caller, &b.service, &b.sans, b.ttl.as_deref())
        .await?;
    Ok(created(grant))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    service: Option<String>,
    status: Option<String>,
    /// RFC 3339 time: only certificates that expire before it.
    expires_before: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

fn limit_of(limit: Option<i64>) -> Result<i64> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(Error::malformed(
            "bad-query",
            format!("limit {n} must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

fn bad_cursor() -> Error {
    Error::malformed(
        "bad-query",
        "cursor is not one this server handed out; use next_cursor from the previous page",
    )
}

async fn list_certificates(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    admin(&state, &headers).await?;
    let q: ListQuery = parse_query(q)?;
    if let Some(s) = &q.status {
        if !["active", "revoked", "expired"].contains(&s.as_str()) {
            return Err(Error::malformed(
                "bad-query",
                format!("status {s:?} must be active, revoked or expired"),
            ));
        }
    }
    if let Some(s) = &q.service {
        crate::names::Identity::parse(s)?;
    }
    let expires_before = q
        .expires_before
        .as_deref()
        .map(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .map_err(|_| {
                    Error::malformed(
                        "bad-query",
                        format!("expires_before {t:?} must be an RFC 3339 time"),
                    )
                })
        })
        .transpose()?;
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            let (t, s) = c.split_once('.').ok_or_else(bad_cursor)?;
            Ok::<_, Error>((
                t.parse::<i64>().map_err(|_| bad_cursor())?,
                crate::names::Serial::parse(s)
                    .map_err(|_| bad_cursor())?
                    .to_string(),
            ))
        })
        .transpose()?;
    let limit = limit_of(q.limit)?;
    let query = CertificateQuery {
        identity: q.service,
        status: q.status,
        expires_before,
        limit,
        after,
    };
    let items = state.store.list_certificates(&query, now_secs()).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| {
            items
                .last()
                .map(|c| format!("{}.{}", c.created_at.unix_timestamp(), c.serial))
        })
        .flatten();
    Ok(Json(Page { items, next_cursor }).into_response())
}

#[derive(Serialize)]
struct CertificateView {
    #[serde(flatten)]
    record: crate::store::CertificateRecord,
    certificate: String,
}

async fn get_certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(serial): Path<String>,
) -> Result<Response> {
    admin(&state, &headers).await?;
    let record = state.certificate(&serial).await?;
    let certificate = crate::pem::encode("CERTIFICATE", &record.der);
    Ok(Json(CertificateView {
        record,
        certificate,
    })
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: Option<String>,
}

/// Reads an optional JSON body: an empty body means all defaults.
async fn optional_body<T: DeserializeOwned + Default>(req: Request) -> Result<T> {
    let headers = req.headers().clone();
    let bytes = read_body(req).await?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    check_json_content_type(&headers)?;
    parse_json(&bytes)
}

async fn revoke_certificate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(serial): Path<String>,
    req: Request,
) -> Result<Response> {
    let caller = admin(&state, &headers).await?;
    let b: RevokeBody = optional_body(req).await?;
    let reason = b.reason.unwrap_or_else(|| "unspecified".into());
    let record = state.revoke_serial(&caller, &serial, &reason).await?;
    Ok(Json(record).into_response())
}

async fn revoke_service(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(service): Path<String>,
    req: Request,
) -> Result<Response> {
    let caller = admin(&state, &headers).await?;
    let b: RevokeBody = optional_body(req).await?;
    let reason = b.reason.unwrap_or_else(|| "unspecified".into());
    let n = state.revoke_identity(&caller, &service, &reason).await?;
    Ok(
        Json(serde_json::json!({ "service": service, "revoked": n, "enabled": false }))
            .into_response(),
    )
}

async fn enable_service(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(service): Path<String>,
) -> Result<Response> {
    let caller = admin(&state, &headers).await?;
    state.enable_identity(&caller, &service).await?;
    Ok(Json(serde_json::json!({ "service": service, "enabled": true })).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn list_audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    admin(&state, &headers).await?;
    let q: AuditQuery = parse_query(q)?;
    let limit = limit_of(q.limit)?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| c.parse::<i64>().map_err(|_| bad_cursor()))
        .transpose()?;
    let items = state.store.list_audit(limit, before).await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }).into_response())
}
