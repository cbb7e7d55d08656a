//! One error type for the whole crate, with a kind that decides the HTTP status.
//!
//! Messages are lowercase, carry no final period, and name the action that failed, so that a
//! log line or a problem+json `detail` reads as a sentence fragment an operator can act on.

use std::fmt;

/// What went wrong, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// The input could not be parsed: JSON, PEM, DER, a CSR signature, a query parameter.
    Malformed,
    /// No credentials, or credentials that do not check out.
    Unauthenticated,
    /// Authenticated, but policy or state refuses the request.
    Forbidden,
    /// The named serial or identity does not exist.
    NotFound,
    /// The request body is larger than the server accepts.
    TooLarge,
    /// The request body is not of a media type the endpoint reads.
    UnsupportedMediaType,
    /// A dependency (the database) is unreachable; the caller may retry later.
    Unavailable,
    /// A fault of the server itself; details go to the log, never to the client.
    Internal,
}

/// The crate's error: a kind, a human-readable detail, and an optional stable code that
/// clients and metrics can match on (for example `token-replayed`).
#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub code: &'static str,
    pub detail: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, code: &'static str, detail: impl Into<String>) -> Self {
        Error {
            kind,
            code,
            detail: detail.into(),
        }
    }

    pub fn malformed(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Malformed, code, detail)
    }

    pub fn unauthenticated(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Unauthenticated, code, detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, code, detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, "unavailable", detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(Kind::Internal, "internal", detail)
    }

    /// Prefixes the detail with the action that was under way, keeping kind and code.
    pub fn context(mut self, action: &str) -> Self {
        self.detail = format!("{action}: {}", self.detail);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for Error {}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        let outage = match &e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::BeginFailed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| is_outage_code(&c)),
            _ => false,
        };
        if outage {
            Error::unavailable(format!("the database is unreachable: {e}"))
        } else {
            Error::internal(format!("database error: {e}"))
        }
    }
}

/// Whether a database error code means the database is going away, coming back or out of
/// room for connections, rather than that the statement was wrong: the request may succeed
/// when retried, so the caller gets 503 and not 500.
///
/// PostgreSQL codes are five-character SQLSTATEs: class 08 (connection exception), 57P01 to
/// 57P03 (administrator shutdown, crash shutdown, cannot connect now) and 53300 (too many
/// connections). SQLite codes are numbers whose low byte is the primary result code:
/// SQLITE_BUSY (5) and SQLITE_LOCKED (6), left when `busy_timeout` ran out.
pub fn is_outage_code(code: &str) -> bool {
    if code.len() == 5 {
        return code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300");
    }
    code.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_codes_are_unavailable_and_others_internal() {
        for code in [
            "08000", "08003", "08006", "57P01", "57P02", "57P03", "53300", "5", "517", "6",
        ] {
            assert!(is_outage_code(code), "{code}");
        }
        // Unique violation, syntax error, serialization failure, SQLITE_CONSTRAINT_UNIQUE.
        for code in ["23505", "42601", "40001", "2067", "19", ""] {
            assert!(!is_outage_code(code), "{code}");
        }
    }

    #[test]
    fn connection_failures_map_to_unavailable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            Error::from(sqlx::Error::Io(refused)).kind,
            Kind::Unavailable
        );
        assert_eq!(
            Error::from(sqlx::Error::PoolTimedOut).kind,
            Kind::Unavailable
        );
        assert_eq!(Error::from(sqlx::Error::RowNotFound).kind, Kind::Internal);
    }
}
