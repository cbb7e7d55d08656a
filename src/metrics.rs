//! Prometheus counters and histograms, rendered in the text exposition format.
//!
//! A handful of labelled counters and one latency histogram per route need no metrics
//! framework: atomics and a short-lived lock on label insertion are enough.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A counter with one label.
#[derive(Default)]
pub struct LabelledCounter {
    values: Mutex<BTreeMap<String, u64>>,
}

impl LabelledCounter {
    pub fn inc(&self, label: &str) {
        self.add(label, 1);
    }

    pub fn add(&self, label: &str, n: u64) {
        if let Ok(mut m) = self.values.lock() {
            *m.entry(label.to_owned()).or_default() += n;
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        self.values
            .lock()
            .map(|m| m.get(label).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        if let Ok(m) = self.values.lock() {
            for (k, v) in m.iter() {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
            }
        }
    }
}

/// Bucket upper bounds in seconds: from well under a millisecond to the request timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Histogram {
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram {
            counts: BUCKETS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// Every metric the server exports.
pub struct Metrics {
    pub issuances: AtomicU64,
    pub renewals: AtomicU64,
    pub revocations: LabelledCounter,
    pub refusals: LabelledCounter,
    latency: Mutex<BTreeMap<String, std::sync::Arc<Histogram>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            issuances: AtomicU64::new(0),
            renewals: AtomicU64::new(0),
            revocations: LabelledCounter::default(),
            refusals: LabelledCounter::default(),
            latency: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Values sampled at render time from other parts of the server.
pub struct Gauges {
    pub crl: Vec<(String, i64, usize, i64)>,
    pub pool_size: u32,
    pub pool_idle: usize,
    pub pool_max: u32,
    pub ca_not_after: Vec<(String, i64)>,
    pub now: i64,
}

impl Metrics {
    pub fn refusal(&self, code: &str) {
        self.refusals.inc(code);
    }

    /// Records one request's latency under its route template.
    pub fn observe(&self, route: &str, elapsed: Duration) {
        let h = {
            let Ok(mut m) = self.latency.lock() else {
                return;
            };
            m.entry(route.to_owned())
                .or_insert_with(|| std::sync::Arc::new(Histogram::new()))
                .clone()
        };
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            h.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        h.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        h.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "sigil_issuances_total",
            "Certificates issued with a token.",
            self.issuances.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "sigil_renewals_total",
            "Certificates renewed over mTLS.",
            self.renewals.load(Ordering::Relaxed),
        );
        self.revocations.render(
            &mut out,
            "sigil_revocations_total",
            "reason",
            "Certificates revoked, by reason.",
        );
        self.refusals.render(
            &mut out,
            "sigil_refusals_total",
            "code",
            "Requests refused, by problem code.",
        );

        let name = "sigil_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Request latency by route.\n# TYPE {name} histogram"
        );
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                let mut cumulative = 0;
                for (i, b) in BUCKETS.iter().enumerate() {
                    cumulative += h.counts[i].load(Ordering::Relaxed);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{route=\"{route}\",le=\"{b}\"}} {cumulative}"
                    );
                }
                let count = h.count.load(Ordering::Relaxed);
                let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{{route=\"{route}\"}} {sum}\n\
                     {name}_count{{route=\"{route}\"}} {count}"
                );
            }
        }

        let _ = writeln!(
            out,
            "# HELP sigil_crl_age_seconds Seconds since the served CRL's thisUpdate.\n\
             # TYPE sigil_crl_age_seconds gauge"
        );
        for (scope, this_update, _, _) in &g.crl {
            let _ = writeln!(
                out,
                "sigil_crl_age_seconds{{scope=\"{scope}\"}} {}",
                g.now - this_update
            );
        }
        let _ = writeln!(
            out,
            "# HELP sigil_crl_bytes Size of the served CRL in DER.\n# TYPE sigil_crl_bytes gauge"
        );
        for (scope, _, size, _) in &g.crl {
            let _ = writeln!(out, "sigil_crl_bytes{{scope=\"{scope}\"}} {size}");
        }
        let _ = writeln!(
            out,
            "# HELP sigil_crl_number CRL number of the served CRL.\n# TYPE sigil_crl_number gauge"
        );
        for (scope, _, _, number) in &g.crl {
            let _ = writeln!(out, "sigil_crl_number{{scope=\"{scope}\"}} {number}");
        }
        let in_use = (g.pool_size as usize).saturating_sub(g.pool_idle);
        let _ = writeln!(
            out,
            "# HELP sigil_db_pool_connections Database connections of this replica, by state.\n\
             # TYPE sigil_db_pool_connections gauge\n\
             sigil_db_pool_connections{{state=\"open\"}} {}\n\
             sigil_db_pool_connections{{state=\"idle\"}} {}\n\
             sigil_db_pool_connections{{state=\"in_use\"}} {in_use}\n\
             # HELP sigil_db_pool_max_connections Most database connections this replica opens.\n\
             # TYPE sigil_db_pool_max_connections gauge\n\
             sigil_db_pool_max_connections {}",
            g.pool_size, g.pool_idle, g.pool_max
        );
        let _ = writeln!(
            out,
            "# HELP sigil_ca_expiry_seconds Seconds until each CA certificate expires.\n\
             # TYPE sigil_ca_expiry_seconds gauge"
        );
        for (which, not_after) in &g.ca_not_after {
            let _ = writeln!(
                out,
                "sigil_ca_expiry_seconds{{ca=\"{which}\"}} {}",
                not_after - g.now
            );
        }
        out
    }
}
