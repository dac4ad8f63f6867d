//! The human-readable report, laid out like etcd's benchmark tool prints it.

use std::fmt::Write;

use crate::stats::Section;
use crate::Report;

impl Report {
    /// The report as text: one block per section.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} against {} ({} clients over {} connections)",
            self.workload,
            self.endpoints.join(","),
            self.clients,
            self.conns
        );
        for s in &self.sections {
            section(&mut out, s);
        }
        out
    }
}

fn section(out: &mut String, s: &Section) {
    let l = &s.latency_ms;
    let _ = writeln!(out, "\n{}:", s.name);
    let _ = writeln!(out, "  Total:\t{:.4} secs.", s.elapsed_seconds);
    let _ = writeln!(out, "  Count:\t{}", s.requests);
    let _ = writeln!(out, "  Errors:\t{}", s.errors);
    if let Some(e) = &s.first_error {
        let _ = writeln!(out, "  First error:\t{e}");
    }
    let _ = writeln!(out, "  Slowest:\t{:.4} ms.", l.max);
    let _ = writeln!(out, "  Fastest:\t{:.4} ms.", l.min);
    let _ = writeln!(out, "  Average:\t{:.4} ms.", l.mean);
    let _ = writeln!(out, "  Stddev:\t{:.4} ms.", l.stddev);
    let _ = writeln!(out, "  Per second:\t{:.1}", s.throughput);
    if !s.histogram.is_empty() {
        let _ = writeln!(out, "\n  Response time histogram (ms):");
        let most = s
            .histogram
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(1)
            .max(1);
        for b in &s.histogram {
            let bar = "∎".repeat((b.count * 40 / most) as usize);
            let _ = writeln!(out, "  {:>10.3} [{}]\t|{bar}", b.upper_ms, b.count);
        }
    }
    let _ = writeln!(out, "\n  Latency distribution (ms):");
    for (p, v) in [
        ("50%", l.p50),
        ("90%", l.p90),
        ("99%", l.p99),
        ("99.9%", l.p999),
    ] {
        let _ = writeln!(out, "  {p} in {v:.4}");
    }
}
