//! How long signing a full CRL takes, how large it is, and how much memory it needs, for
//! 1,000, 100,000 and 1,000,000 revoked certificates.
//!
//! Run with `cargo bench --bench crl`. Each size runs in a child process of its own (this
//! binary, re-executed with `--size N`), so that the peak resident memory it reports
//! (VmHWM from /proc/self/status) belongs to that size alone. Build times are the minimum and
//! median wall-clock time of several signatures, and the least CPU time one took (on a shared
//! machine the CPU time is the steadier figure). "RSS before" is the process holding one set of entries just before signing them;
//! the peak includes signing.

use std::process::Command;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rcgen::RevocationReason;
use sigil::ca::{Ca, CaFiles, CrlEntry, CrlScope, InitOptions};
use sigil::names::Serial;
use time::OffsetDateTime;

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

/// Reasons cycled through the entries: mostly routine, some compromises, and `None` for
/// unspecified, which carries no reason extension.
const REASONS: [Option<RevocationReason>; 4] = [
    None,
    Some(RevocationReason::Superseded),
    Some(RevocationReason::KeyCompromise),
    Some(RevocationReason::CessationOfOperation),
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--size") {
        let n = args
            .get(pos + 1)
            .and_then(|v| v.parse().ok())
            .expect("--size takes a number of entries");
        measure(n);
        return;
    }
    let exe = std::env::current_exe().expect("path of this benchmark");
    println!(
        "{:>9}  {:>4}  {:>9}  {:>11}  {:>12}  {:>11}  {:>11}  {:>15}  {:>14}",
        "entries",
        "runs",
        "min (ms)",
        "median (ms)",
        "CPU min (ms)",
        "DER (bytes)",
        "bytes/entry",
        "RSS before (MiB)",
        "peak RSS (MiB)"
    );
    for n in SIZES {
        let out = Command::new(&exe)
            .arg("--size")
            .arg(n.to_string())
            .output()
            .expect("running one size");
        assert!(
            out.status.success(),
            "size {n} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// CPU time this thread has run: on a shared machine it leaves out the time spent waiting
/// for a core, which wall-clock time does not.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "reading the thread's CPU clock");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Peak and current resident memory of this process, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn measure(n: usize) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let files = CaFiles::new(dir.path());
    Ca::create(
        &files,
        &InitOptions {
            organization: "bench".into(),
        },
    )
    .expect("creating a CA");
    let ca = Ca::load(&files).expect("loading the CA");

    let now = OffsetDateTime::now_utc();
    let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
    // Serials as the CA makes them: 20 random bytes, top bit clear, first byte never zero.
    let mut entries = || -> Vec<CrlEntry> {
        (0..n)
            .map(|i| {
                let mut serial = [0u8; 20];
                rng.fill(&mut serial);
                serial[0] = (serial[0] & 0x7f).max(1);
                CrlEntry::new(
                    &Serial::from_be_bytes(&serial),
                    now - time::Duration::seconds(i as i64 % 86_400),
                    REASONS[i % REASONS.len()],
                )
            })
            .collect()
    };

    let runs = match n {
        0..=1_000 => 50,
        1_001..=100_000 => 5,
        _ => 3,
    };
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut cpu: Vec<Duration> = Vec::with_capacity(runs);
    let mut size = 0;
    let mut rss_entries = 0;
    for run in 0..runs {
        let entries = entries();
        rss_entries = rss_entries.max(memory_kib().1);
        let started = Instant::now();
        let cpu_started = thread_cpu();
        let der = ca
            .sign_crl(
                CrlScope::Intermediate,
                run as u64 + 1,
                now,
                now + time::Duration::hours(24),
                entries,
            )
            .expect("signing the CRL");
        times.push(started.elapsed());
        cpu.push(thread_cpu() - cpu_started);
        size = der.len();
    }
    times.sort();
    cpu.sort();
    let (peak, _) = memory_kib();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{:>9}  {:>4}  {:>9.2}  {:>11.2}  {:>12.2}  {:>11}  {:>11.1}  {:>16.1}  {:>14.1}",
        n,
        runs,
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(cpu[0]),
        size,
        size as f64 / n as f64,
        rss_entries as f64 / 1024.0,
        peak as f64 / 1024.0,
    );
}
