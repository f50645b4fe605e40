//! The results of a benchmark program, shared by the library's suite
//! (`benches/core.rs`) and the ETCD benchmark (`benches/etcd.rs`): a flat summary
//! (printed as JSON), the issue targets' rows, and the Markdown sections; and the
//! clock and the percentile both measure with.
// Each program uses a part of it.
#![allow(dead_code)]

use std::fmt::Write as _;

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nearest-rank percentile (`q` in 0..=1) of unsorted samples.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    assert!(!samples.is_empty(), "no samples");
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// A target row's verdict: "yes" or "**no**" (a row can also say why it was not
/// measured, see [`Report::target`]).
pub fn yes_no(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

#[derive(Default)]
pub struct Report {
    /// key -> value (already JSON), in insertion order.
    summary: Vec<(String, String)>,
    /// The targets: what, measured, limit, verdict.
    targets: Vec<(String, String, String, String)>,
    markdown: String,
}

impl Report {
    pub fn num(&mut self, key: impl Into<String>, value: f64) {
        self.summary.push((key.into(), format!("{value:.4}")));
    }

    pub fn text(&mut self, key: impl Into<String>, value: &str) {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        self.summary.push((key.into(), format!("\"{escaped}\"")));
    }

    pub fn flag(&mut self, key: impl Into<String>, value: bool) {
        self.summary.push((key.into(), value.to_string()));
    }

    /// A target row; `verdict` is [`yes_no`]'s, or why the row was not measured
    /// ("skipped: ...").
    pub fn target(
        &mut self,
        what: impl Into<String>,
        measured: String,
        limit: String,
        verdict: &str,
    ) {
        self.targets
            .push((what.into(), measured, limit, verdict.to_owned()));
    }

    /// The target rows as Markdown table rows.
    pub fn targets_md(&self) -> String {
        let mut out = String::new();
        for (what, measured, limit, verdict) in &self.targets {
            let _ = writeln!(out, "| {what} | {measured} | {limit} | {verdict} |");
        }
        out
    }

    /// How many targets were met, of how many.
    pub fn targets_met(&self) -> (usize, usize) {
        let met = self.targets.iter().filter(|t| t.3 == yes_no(true)).count();
        (met, self.targets.len())
    }

    pub fn md(&mut self, text: &str) {
        self.markdown.push_str(text);
    }

    /// The Markdown sections written so far.
    pub fn markdown(&self) -> &str {
        &self.markdown
    }

    /// The summary as one flat JSON object.
    pub fn json(&self) -> String {
        let body: Vec<String> = self
            .summary
            .iter()
            .map(|(k, v)| format!("  \"{k}\": {v}"))
            .collect();
        format!("{{\n{}\n}}", body.join(",\n"))
    }
}
