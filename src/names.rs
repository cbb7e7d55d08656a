//! Parsed forms of the names sigil deals in: service identities, subject alternative names,
//! serial numbers and durations. Each is parsed once at the edge; the rest of the crate only
//! sees values that are known to be well formed.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Input echoed back in an error message, cut to a readable length: a caller who sent a
/// megabyte of junk does not need it returned.
pub fn clip(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// Longest identity accepted, in bytes. Identities end up in a subject CN, whose upper bound
/// is 64 characters (RFC 5280, ub-common-name).
pub const MAX_IDENTITY_LEN: usize = 64;

/// A service identity: lowercase letters, digits and hyphens in dot-separated labels, each
/// label starting and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Identity(String);

impl Identity {
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > MAX_IDENTITY_LEN {
            return Err(Error::malformed(
                "bad-identity",
                format!(
                    "identity {} must be 1 to {MAX_IDENTITY_LEN} characters long",
                    clip(s)
                ),
            ));
        }
        for label in s.split('.') {
            let ok = !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(Error::malformed(
                    "bad-identity",
                    format!(
                        "identity {} must be dot-separated labels of lowercase letters, \
                         digits and inner hyphens, like \"payments\" or \"billing.api\"",
                        clip(s)
                    ),
                ));
            }
        }
        Ok(Identity(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Identity::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Longest DNS name (RFC 1035, 253 characters in text form).
const MAX_DNS_LEN: usize = 253;

/// A subject alternative name, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum San {
    /// A DNS name in lowercase A-label form; may start with `*.` (a wildcard).
    Dns(String),
    Ip(IpAddr),
    /// An absolute URI such as a SPIFFE ID; kept as given after a syntax check.
    Uri(String),
}

impl San {
    /// Parses a name as the API and command line accept it: an IP address, a URI (anything
    /// with `://`), or else a DNS name.
    pub fn parse(s: &str) -> Result<Self> {
        if let Ok(ip) = IpAddr::from_str(s) {
            return Ok(San::Ip(ip));
        }
        if s.contains("://") {
            return parse_uri(s).map(San::Uri);
        }
        parse_dns(s).map(San::Dns)
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, San::Dns(d) if d.starts_with("*."))
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => f.write_str(d),
            San::Ip(ip) => write!(f, "{ip}"),
            San::Uri(u) => f.write_str(u),
        }
    }
}

impl Serialize for San {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for San {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        San::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn parse_dns(s: &str) -> Result<String> {
    let bad = |why: &str| Error::malformed("bad-name", format!("DNS name {} {why}", clip(s)));
    if !s.is_ascii() {
        return Err(bad(
            "is not ASCII: write internationalized names as punycode A-labels (xn--)",
        ));
    }
    let lower = s.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() || name.len() > MAX_DNS_LEN {
        return Err(bad("must be 1 to 253 characters long"));
    }
    let body = name.strip_prefix("*.").unwrap_or(name);
    for label in body.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("has an empty label or one longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad(
                "may hold only letters, digits, hyphens and dots (and a leading *.)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label that starts or ends with a hyphen"));
        }
    }
    if body
        .split('.')
        .next_back()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad("looks like an IP address but is not a valid one"));
    }
    Ok(name.to_owned())
}

fn parse_uri(s: &str) -> Result<String> {
    let bad = |why: &str| Error::malformed("bad-name", format!("URI {} {why}", clip(s)));
    let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("has no scheme"))?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    if !scheme_ok {
        return Err(bad("has an invalid scheme"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(bad("has no authority (host or trust domain)"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=%".contains(&b);
    if !s.bytes().all(allowed) {
        return Err(bad("holds characters that must be percent-encoded"));
    }
    // A dot segment names another path once resolved, so a policy that allows a prefix
    // could be escaped with one; SPIFFE IDs forbid them outright.
    let path = rest[authority.len()..]
        .split(['?', '#'])
        .next()
        .unwrap_or("");
    let dot_segment = path.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    });
    if dot_segment {
        return Err(bad(
            "has a . or .. path segment; write the path without them",
        ));
    }
    Ok(s.to_owned())
}

/// A certificate serial number: lowercase hex without separators, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Serial(String);

impl Serial {
    /// Parses a serial as an operator may type it: hex, upper or lower case, optionally with
    /// colons as `openssl x509 -serial` and browsers print it.
    pub fn parse(s: &str) -> Result<Self> {
        let hex: String = s
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        let hex = hex.trim_start_matches('0');
        if hex.is_empty() || hex.len() > 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::malformed(
                "bad-serial",
                format!(
                    "serial {} must be a positive hexadecimal number of at most 40 digits \
                     (colons allowed)",
                    clip(s)
                ),
            ));
        }
        Ok(Serial(hex.to_owned()))
    }

    /// The serial of big-endian integer bytes, as they appear in DER.
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let hex = hex::encode(bytes);
        let trimmed = hex.trim_start_matches('0');
        Serial(if trimmed.is_empty() {
            "0".into()
        } else {
            trimmed.into()
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Big-endian bytes of the serial, as DER wants them (a leading zero byte is not added).
    /// CRLs call this once per entry, so it decodes without intermediate strings.
    pub fn to_be_bytes(&self) -> Vec<u8> {
        // The constructors admit only lowercase hex digits.
        let nibble = |d: u8| match d {
            b'0'..=b'9' => d - b'0',
            _ => d - b'a' + 10,
        };
        let digits = self.0.as_bytes();
        let (head, pairs) = digits.split_at(digits.len() % 2);
        let mut out = Vec::with_capacity(head.len() + pairs.len() / 2);
        out.extend(head.iter().map(|&d| nibble(d)));
        out.extend(
            pairs
                .chunks_exact(2)
                .map(|p| nibble(p[0]) << 4 | nibble(p[1])),
        );
        out
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a duration such as `90s`, `10m`, `1h`, `1h30m` or `7d`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let bad = || {
        Error::malformed(
            "bad-duration",
            format!(
                "duration {} must be a number with a unit: s, m, h or d \
                 (for example 10m or 1h30m)",
                clip(s)
            ),
        )
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut saw_unit = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        digits.clear();
        saw_unit = true;
    }
    if !digits.is_empty() || !saw_unit {
        return Err(bad());
    }
    if total == 0 {
        return Err(Error::malformed(
            "bad-duration",
            format!("duration {} must be longer than zero", clip(s)),
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest exact units.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if secs >= unit {
            out.push_str(&format!("{}{}", secs / unit, name));
            secs %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        for good in ["payments", "billing.api", "ci-build-42", "a1"] {
            assert!(Identity::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Payments",
            "-x",
            "x-",
            "a..b",
            "a_b",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(Identity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sans() {
        assert_eq!(
            San::parse("API.Example.com.").unwrap(),
            San::Dns("api.example.com".into())
        );
        assert_eq!(
            San::parse("10.0.0.1").unwrap(),
            San::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(San::parse("::1").unwrap(), San::Ip("::1".parse().unwrap()));
        assert!(San::parse("spiffe://example.org/payments").is_ok());
        assert!(San::parse("spiffe://example.org/ci/..x/a.b").is_ok());
        assert!(San::parse("*.example.com").unwrap().is_wildcard());
        let unicode = San::parse("bücher.example").unwrap_err();
        assert!(unicode.detail.contains("punycode"), "{}", unicode.detail);
        for bad in [
            "",
            "a..b",
            "-a.com",
            "a_b.com",
            "1.2.3.999",
            "spiffe://",
            "a.*.com",
            "spiffe://example.org/ci/../payments",
            "spiffe://example.org/ci/%2E%2e/payments",
            "spiffe://example.org/./ci",
        ] {
            assert!(San::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serials() {
        assert_eq!(Serial::parse("0A:BC").unwrap().as_str(), "abc");
        assert_eq!(Serial::from_be_bytes(&[0x00, 0x7f, 0x01]).as_str(), "7f01");
        assert_eq!(
            Serial::parse("7f01").unwrap().to_be_bytes(),
            vec![0x7f, 0x01]
        );
        assert_eq!(
            Serial::parse("abc").unwrap().to_be_bytes(),
            vec![0x0a, 0xbc]
        );
        assert!(Serial::parse("xyz").is_err());
        assert!(Serial::parse(&"f".repeat(41)).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        for bad in ["", "10", "h", "1x", "0s", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
