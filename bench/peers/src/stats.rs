//! Clocks, CPU time and the statistics of the report.

// CLOCK_MONOTONIC in ns (Python's `time.monotonic_ns` and the C agent read it too) and
// the nearest-rank percentile, as the library's own benchmark programs measure.
pub use crate::report::{mono_ns, percentile};

/// User + system time of a `struct rusage`, in ns.
pub fn rusage_ns(ru: &libc::rusage) -> u64 {
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rusage(who: libc::c_int) -> u64 {
    // SAFETY: getrusage fills a struct rusage, for which zero bytes are valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a writable struct.
    unsafe { libc::getrusage(who, &mut ru) };
    rusage_ns(&ru)
}

/// CPU ns used by this process and its reaped children (unilock's waiter children).
pub fn cpu_ns() -> u64 {
    rusage(libc::RUSAGE_SELF) + rusage(libc::RUSAGE_CHILDREN)
}

pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}

/// Jain's fairness index of the shares: 1 when all are equal, 1/n when one process
/// got everything.
pub fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (x.len() as f64 * squares)
}

/// A duration in ns, with the unit a reader wants: ns, µs, ms or s.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A small xorshift generator for the release moments (no dependency needed).
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        Rng(mono_ns() | 1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
