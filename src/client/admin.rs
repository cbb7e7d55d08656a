//! Operator commands: revoke a certificate or a whole identity, enable an identity again, and
//! list or show what was issued. Each talks to the admin API with an admin key, over a
//! connection pinned to the CA's root.

use std::fmt::Write as _;

use anyhow::Context;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{AdminArgs, CaArgs, CaClient};
use crate::names::{Identity, Serial};

/// Page size of `certs list` when `--limit` is not given: the server's default.
pub const DEFAULT_PAGE: u32 = 100;

/// What `sigil revoke` revokes.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    /// One certificate.
    Serial(String),
    /// Every unexpired certificate of an identity; the identity is disabled too.
    Service(String),
}

/// Filters and paging of `sigil certs list`.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub service: Option<String>,
    /// `active`, `revoked` or `expired`.
    pub status: Option<String>,
    /// Page size; with `all`, the size of each page fetched.
    pub limit: Option<u32>,
    /// Start after this cursor, as a previous page's `next_cursor` gave it.
    pub cursor: Option<String>,
    /// Follow cursors until the last page.
    pub all: bool,
}

/// A certificate record as the admin API returns it, with the fields the tables show.
#[derive(Debug, Clone, Deserialize)]
pub struct CertificateInfo {
    pub serial: String,
    pub identity: String,
    #[serde(default)]
    pub sans: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub status: String,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub revocation_reason: Option<String>,
    #[serde(default)]
    pub key_type: String,
    #[serde(default)]
    pub key_fingerprint: String,
    pub provisioner: Option<String>,
    pub renewed_from: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The certificate, PEM (only in the answer for one certificate).
    pub certificate: Option<String>,
}

/// A connection to the admin API.
pub struct AdminClient {
    client: CaClient,
    key: String,
}

impl AdminClient {
    /// Connects as `ca` says, with the admin key `admin` names.
    pub async fn connect(ca: &CaArgs, admin: &AdminArgs) -> anyhow::Result<Self> {
        let key = admin.key()?;
        let client = CaClient::new(ca).await?;
        Ok(AdminClient { client, key })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        Ok(self
            .client
            .call(method, path, Some(&self.key), body)
            .await?)
    }

    /// Fetches one certificate record, with its PEM.
    pub async fn certificate(&self, serial: &Serial) -> anyhow::Result<Value> {
        self.call(
            Method::GET,
            &format!("/v1/admin/certificates/{serial}"),
            None,
        )
        .await
    }

    /// Revokes one certificate; returns its record after the revocation.
    pub async fn revoke_serial(
        &self,
        serial: &Serial,
        reason: Option<&str>,
    ) -> anyhow::Result<Value> {
        self.call(
            Method::POST,
            &format!("/v1/admin/certificates/{serial}/revoke"),
            Some(reason_body(reason)),
        )
        .await
    }

    /// Revokes every unexpired certificate of an identity and disables it; returns the
    /// server's answer, whose `revoked` says how many this call revoked.
    pub async fn revoke_service(
        &self,
        service: &Identity,
        reason: Option<&str>,
    ) -> anyhow::Result<Value> {
        self.call(
            Method::POST,
            &format!("/v1/admin/services/{service}/revoke"),
            Some(reason_body(reason)),
        )
        .await
    }

    /// Enables an identity again.
    pub async fn enable(&self, service: &Identity) -> anyhow::Result<Value> {
        self.call(
            Method::POST,
            &format!("/v1/admin/services/{service}/enable"),
            None,
        )
        .await
    }

    /// Fetches one page of certificates: (items, next cursor).
    pub async fn list_page(
        &self,
        opts: &ListOptions,
        cursor: Option<&str>,
    ) -> anyhow::Result<(Vec<Value>, Option<String>)> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(s) = &opts.service {
            query.push(("service", s.clone()));
        }
        if let Some(s) = &opts.status {
            query.push(("status", s.clone()));
        }
        if let Some(n) = opts.limit {
            query.push(("limit", n.to_string()));
        }
        if let Some(c) = cursor {
            query.push(("cursor", c.to_owned()));
        }
        let mut path = "/v1/admin/certificates".to_owned();
        if !query.is_empty() {
            path.push('?');
            path.push_str(&serde_urlencoded::to_string(&query).context("encoding the query")?);
        }
        let page = self.call(Method::GET, &path, None).await?;
        let items = page["items"]
            .as_array()
            .cloned()
            .context("the CA's answer has no items")?;
        let next = page["next_cursor"].as_str().map(str::to_owned);
        Ok((items, next))
    }

    /// Fetches the page `opts` names or, with `opts.all`, every page after it.
    pub async fn list(&self, opts: &ListOptions) -> anyhow::Result<(Vec<Value>, Option<String>)> {
        let (mut items, mut next) = self.list_page(opts, opts.cursor.as_deref()).await?;
        if opts.all {
            while let Some(cursor) = next.take() {
                let (more, after) = self.list_page(opts, Some(&cursor)).await?;
                items.extend(more);
                next = after;
            }
        }
        Ok((items, next))
    }
}

fn reason_body(reason: Option<&str>) -> Value {
    match reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> anyhow::Result<T> {
    serde_json::from_value(v.clone()).context("reading the CA's answer")
}

fn pretty(v: &Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(v)?)
}

/// Time as the tables show it: RFC 3339, seconds, UTC.
fn when(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `sigil revoke`: revokes and prints what happened.
pub async fn revoke(
    ca: &CaArgs,
    admin: &AdminArgs,
    target: RevokeTarget,
    reason: Option<&str>,
    json_out: bool,
) -> anyhow::Result<()> {
    // Parsing first refuses a typo before anything is sent, and keeps the URL path clean.
    match target {
        RevokeTarget::Serial(s) => {
            let serial = Serial::parse(&s).map_err(|e| anyhow::anyhow!(e.detail))?;
            let api = AdminClient::connect(ca, admin).await?;
            let before: CertificateInfo = parse(&api.certificate(&serial).await?)?;
            let after = api.revoke_serial(&serial, reason).await?;
            if json_out {
                println!("{}", pretty(&after)?);
            } else {
                print!("{}", describe_revocation(&before, &parse(&after)?));
            }
        }
        RevokeTarget::Service(s) => {
            let service = Identity::parse(&s).map_err(|e| anyhow::anyhow!(e.detail))?;
            let api = AdminClient::connect(ca, admin).await?;
            let answer = api.revoke_service(&service, reason).await?;
            if json_out {
                println!("{}", pretty(&answer)?);
            } else {
                let n = answer["revoked"].as_u64().unwrap_or(0);
                println!(
                    "revoked {n} certificate{} of {service}; {service} is disabled and gets no \
                     certificate until `sigil enable --service {service}`",
                    if n == 1 { "" } else { "s" }
                );
            }
        }
    }
    Ok(())
}

/// What a revocation did, from the record before and after it.
pub fn describe_revocation(before: &CertificateInfo, after: &CertificateInfo) -> String {
    let reason = after.revocation_reason.as_deref().unwrap_or("unspecified");
    let at = after.revoked_at.map(when).unwrap_or_default();
    let mut out = String::new();
    if before.status == "revoked" {
        let _ = writeln!(
            out,
            "certificate {} ({}) was already revoked at {at}; the first date stands",
            after.serial, after.identity
        );
        if before.revocation_reason != after.revocation_reason {
            let _ = writeln!(out, "reason raised to {reason}");
        } else {
            let _ = writeln!(out, "reason: {reason}");
        }
    } else {
        let _ = writeln!(
            out,
            "revoked certificate {} ({}) at {at}, reason {reason}",
            after.serial, after.identity
        );
    }
    out
}

/// `sigil enable`: enables an identity again.
pub async fn enable(
    ca: &CaArgs,
    admin: &AdminArgs,
    service: &str,
    json_out: bool,
) -> anyhow::Result<()> {
    let service = Identity::parse(service).map_err(|e| anyhow::anyhow!(e.detail))?;
    let api = AdminClient::connect(ca, admin).await?;
    let answer = api.enable(&service).await?;
    if json_out {
        println!("{}", pretty(&answer)?);
    } else {
        println!(
            "enabled {service}: it may get certificates again; \
             its revoked certificates stay revoked"
        );
    }
    Ok(())
}

/// `sigil certs list`: a table, or JSON with `json_out`.
pub async fn list(
    ca: &CaArgs,
    admin: &AdminArgs,
    opts: &ListOptions,
    json_out: bool,
) -> anyhow::Result<()> {
    if let Some(s) = &opts.service {
        Identity::parse(s).map_err(|e| anyhow::anyhow!(e.detail))?;
    }
    let api = AdminClient::connect(ca, admin).await?;
    let (items, next) = api.list(opts).await?;
    if json_out {
        println!(
            "{}",
            pretty(&json!({ "items": items, "next_cursor": next }))?
        );
        return Ok(());
    }
    let rows = items
        .iter()
        .map(parse::<CertificateInfo>)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if rows.is_empty() {
        eprintln!("no certificates match");
    } else {
        print!("{}", certificate_table(&rows));
    }
    if let Some(c) = next {
        eprintln!("more certificates follow: add --all, or --cursor {c} for the next page");
    }
    Ok(())
}

/// `sigil certs show`: one certificate, as lines of `field: value`, JSON, or the PEM alone.
pub async fn show(
    ca: &CaArgs,
    admin: &AdminArgs,
    serial: &str,
    json_out: bool,
    pem_only: bool,
) -> anyhow::Result<()> {
    let serial = Serial::parse(serial).map_err(|e| anyhow::anyhow!(e.detail))?;
    let api = AdminClient::connect(ca, admin).await?;
    let record = api.certificate(&serial).await?;
    if json_out {
        println!("{}", pretty(&record)?);
        return Ok(());
    }
    let info: CertificateInfo = parse(&record)?;
    if pem_only {
        print!(
            "{}",
            info.certificate
                .as_deref()
                .context("the CA's answer has no certificate")?
        );
    } else {
        print!("{}", certificate_details(&info));
    }
    Ok(())
}

/// Lays out rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The table `certs list` prints.
pub fn certificate_table(rows: &[CertificateInfo]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|c| {
            vec![
                c.serial.clone(),
                c.identity.clone(),
                c.status.clone(),
                when(c.not_after),
                c.revoked_at.map(when).unwrap_or_else(|| "-".into()),
                c.revocation_reason.clone().unwrap_or_else(|| "-".into()),
                if c.sans.is_empty() {
                    "-".into()
                } else {
                    c.sans.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "SERIAL", "SERVICE", "STATUS", "EXPIRES", "REVOKED", "REASON", "NAMES",
        ],
        &cells,
    )
}

/// The lines `certs show` prints.
pub fn certificate_details(c: &CertificateInfo) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let fields = [
        ("serial", c.serial.clone()),
        ("service", c.identity.clone()),
        ("status", c.status.clone()),
        ("names", c.sans.join(", ")),
        ("not before", when(c.not_before)),
        ("not after", when(c.not_after)),
        (
            "revoked at",
            c.revoked_at.map(when).unwrap_or_else(|| "-".into()),
        ),
        ("reason", opt(&c.revocation_reason)),
        ("key", c.key_type.clone()),
        ("key sha256", c.key_fingerprint.clone()),
        ("provisioner", opt(&c.provisioner)),
        ("renewed from", opt(&c.renewed_from)),
        ("issued at", when(c.created_at)),
    ];
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in fields {
        let _ = writeln!(out, "{:<width$} {v}", format!("{k}:"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(serial: &str, status: &str, reason: Option<&str>) -> CertificateInfo {
        let t = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        CertificateInfo {
            serial: serial.into(),
            identity: "payments".into(),
            sans: vec!["payments.internal".into()],
            not_before: t,
            not_after: t + time::Duration::hours(24),
            status: status.into(),
            revoked_at: reason.map(|_| t + time::Duration::hours(1)),
            revocation_reason: reason.map(Into::into),
            key_type: "p256".into(),
            key_fingerprint: "ab".repeat(32),
            provisioner: Some("admin".into()),
            renewed_from: None,
            created_at: t,
            certificate: None,
        }
    }

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            info("7f01", "active", None),
            info("1234567890abcdef", "revoked", Some("keyCompromise")),
        ];
        let text = certificate_table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("SERIAL            SERVICE"), "{text}");
        let status_col = lines[0].find("STATUS").unwrap();
        assert_eq!(&lines[1][status_col..status_col + 6], "active");
        assert_eq!(&lines[2][status_col..status_col + 7], "revoked");
        assert!(lines[2].contains("keyCompromise"), "{text}");
        assert!(lines[1].contains("2027-01-16T08:00:00Z"), "{text}");
    }

    #[test]
    fn revocation_description_tells_first_from_repeat() {
        let active = info("7f01", "active", None);
        let revoked = info("7f01", "revoked", Some("superseded"));
        let upgraded = info("7f01", "revoked", Some("keyCompromise"));
        assert!(describe_revocation(&active, &revoked).starts_with("revoked certificate 7f01"));
        let again = describe_revocation(&revoked, &revoked);
        assert!(again.contains("already revoked"), "{again}");
        assert!(again.contains("reason: superseded"), "{again}");
        let raised = describe_revocation(&revoked, &upgraded);
        assert!(
            raised.contains("reason raised to keyCompromise"),
            "{raised}"
        );
    }
}
