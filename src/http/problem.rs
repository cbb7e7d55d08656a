//! Errors as `application/problem+json` (RFC 9457): the one place kinds become statuses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::{Error, Kind};

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECS: &str = "5";

/// The problem code of a refused request, left in the response's extensions for metrics.
#[derive(Clone, Copy, Debug)]
pub struct ProblemCode(pub &'static str);

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    type_: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
}

pub fn status_of(kind: Kind) -> StatusCode {
    match kind {
        Kind::Malformed => StatusCode::BAD_REQUEST,
        Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
        Kind::Forbidden => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Builds a problem response for any status, for the fallbacks that have no [`Error`].
pub fn problem(status: StatusCode, code: &'static str, detail: &str) -> Response {
    let body = Problem {
        type_: format!("urn:sigil:problem:{code}"),
        title: status.canonical_reason().unwrap_or("error"),
        status: status.as_u16(),
        detail,
        code,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = (status, json).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    resp.extensions_mut().insert(ProblemCode(code));
    resp
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = status_of(self.kind);
        match self.kind {
            // Internal details stay in the log; the client learns only that it was not its fault.
            Kind::Internal => {
                tracing::error!(error = %self.detail, "internal error");
                problem(
                    status,
                    self.code,
                    "internal error; the details are in the server log",
                )
            }
            Kind::Unavailable => {
                tracing::warn!(error = %self.detail, "dependency unavailable");
                problem(
                    status,
                    self.code,
                    "the database is unavailable; retry later",
                )
            }
            _ => problem(status, self.code, &self.detail),
        }
    }
}
