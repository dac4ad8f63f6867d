//! The side-by-side benchmark: `ferry store` and a real etcd 3.4 started on this machine with
//! the same durability (every acknowledged write fsynced: etcd's WAL, ferry's group commit),
//! each workload run on both alternately (A/B, then B/A, …), medians and ferry/etcd ratios;
//! `etcdctl check perf` against both; resident memory after 1,000,000 keys, 10,000 watches
//! and 50,000 leases. Writes a Markdown section into docs/BENCHMARKS.md.
//!
//! Run on demand through `scripts/bench-compare.sh` (or `cargo bench -p ferry --bench compare
//! -- [--rounds N] [--quick] [--no-perf] [--no-memory] [--only TEXT] [--write FILE]`).
//! `--only TEXT` runs the workloads whose command contains TEXT and writes nothing (for
//! before/after measurements of one change).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ferry_bench::{run, BenchConfig, Limit, Report, Workload};
use ferry_testkit::{Kind, Server};

const START: &str = "<!-- compare:start -->";
const END: &str = "<!-- compare:end -->";

struct Case {
    /// The equivalent command line, for the report.
    command: String,
    workload: Workload,
    config: BenchConfig,
    /// Which section of the report carries the headline numbers.
    section: &'static str,
}

struct Options {
    rounds: usize,
    scale: f64,
    perf: bool,
    memory: bool,
    write: Option<PathBuf>,
    only: Option<String>,
}

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        rounds: 3,
        scale: 1.0,
        perf: true,
        memory: true,
        write: None,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                o.rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("--rounds needs a number above 0"))?
            }
            "--quick" => o.scale = 0.1,
            "--no-perf" => o.perf = false,
            "--no-memory" => o.memory = false,
            "--write" => {
                o.write = Some(
                    args.next()
                        .map(PathBuf::from)
                        .ok_or_else(|| anyhow!("--write needs a file"))?,
                )
            }
            "--only" => {
                o.only = Some(
                    args.next()
                        .ok_or_else(|| anyhow!("--only needs the text of a workload's command"))?,
                )
            }
            "--bench" => {} // passed by `cargo bench`
            other => return Err(anyhow!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

/// One row of the comparison: the workload, its flags, and which report section counts.
struct Spec {
    args: &'static str,
    workload: Workload,
    section: &'static str,
    clients: usize,
    conns: usize,
    key_space_size: u64,
    val_size: usize,
    total: u64,
    rate: Option<f64>,
}

fn cases(scale: f64) -> Vec<Case> {
    let wide = |args, workload, section, key_space_size, total| Spec {
        args,
        workload,
        section,
        clients: 64,
        conns: 8,
        key_space_size,
        val_size: 256,
        total,
        rate: None,
    };
    let specs = [
        wide("put", Workload::Put, "put", 100_000, 100_000),
        Spec {
            clients: 1,
            conns: 1,
            ..wide("put", Workload::Put, "put", 1, 5_000)
        },
        wide(
            "range --consistency l",
            Workload::Range {
                serializable: false,
            },
            "range",
            10_000,
            100_000,
        ),
        wide(
            "range --consistency s",
            Workload::Range { serializable: true },
            "range",
            10_000,
            100_000,
        ),
        wide(
            "txn-put --txn-ops 1",
            Workload::TxnPut { ops: 1 },
            "txn",
            100_000,
            50_000,
        ),
        wide(
            "txn-mixed --rw-ratio 4",
            Workload::TxnMixed { read_ratio: 4.0 },
            "txn",
            10_000,
            100_000,
        ),
        Spec {
            clients: 8,
            conns: 1,
            val_size: 8,
            ..wide(
                "watch --watchers 1000 --streams 10",
                Workload::Watch {
                    watchers: 1000,
                    streams: 10,
                    hold: Duration::ZERO,
                },
                "event delivery",
                1,
                2_000,
            )
        },
        Spec {
            clients: 1,
            conns: 1,
            val_size: 8,
            rate: Some(100.0),
            ..wide(
                "watch-latency --watchers 100 --streams 10",
                Workload::WatchLatency {
                    watchers: 100,
                    streams: 10,
                },
                "event delivery",
                1,
                1_000,
            )
        },
        Spec {
            val_size: 8,
            ..wide(
                "lease-keepalive",
                Workload::LeaseKeepalive,
                "keep-alive",
                1,
                100_000,
            )
        },
    ];
    specs
        .into_iter()
        .map(|spec| {
            let mut config = BenchConfig::new(ferry_client::ConnectConfig::new(["-"]));
            config.clients = spec.clients;
            config.conns = spec.conns;
            config.key_space_size = spec.key_space_size;
            config.val_size = spec.val_size;
            config.rate = spec.rate;
            let total = ((spec.total as f64 * scale) as u64).max(100);
            config.limit = Limit::Total(total);
            let mut command = format!(
                "ferry bench {} --clients {} --conns {}",
                spec.args, spec.clients, spec.conns
            );
            if spec.key_space_size > 1 {
                command += &format!(" --key-space-size {}", spec.key_space_size);
            }
            if spec.val_size != 8 {
                command += &format!(" --val-size {}", spec.val_size);
            }
            if let Some(rate) = spec.rate {
                command += &format!(" --rate {rate}");
            }
            command += &format!(" --total {total}");
            Case {
                command,
                workload: spec.workload,
                config,
                section: spec.section,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Default)]
struct Numbers {
    throughput: f64,
    p50: f64,
    p99: f64,
    errors: u64,
    /// Server CPU time (user + system) per operation, µs: on a small shared machine the
    /// load generator competes for the same cores, so this is the server's own cost.
    cpu_us: f64,
}

/// User + system CPU seconds the server process has used so far.
fn cpu_seconds(server: &Server) -> f64 {
    ferry_testkit::process_cpu(server.pid()).as_secs_f64()
}

fn numbers(report: &Report, section: &str) -> anyhow::Result<Numbers> {
    let s = report
        .sections
        .iter()
        .find(|s| s.name == section)
        .ok_or_else(|| anyhow!("{} has no section {section}", report.workload))?;
    Ok(Numbers {
        throughput: s.throughput,
        p50: s.latency_ms.p50,
        p99: s.latency_ms.p99,
        errors: s.errors,
        cpu_us: 0.0,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ferry_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferry"))
}

async fn start_pair() -> anyhow::Result<(Server, Server)> {
    Ok((
        Server::start(Kind::Ferry, ferry_bin(), &[]).await?,
        Server::start(Kind::Etcd, ferry_bin(), &[]).await?,
    ))
}

fn rss_mib(server: &Server) -> anyhow::Result<f64> {
    let pid = server.pid().ok_or_else(|| anyhow!("server not running"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for pid {pid}"))?;
    Ok(kb / 1024.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

async fn side_by_side(
    opts: &Options,
    md: &mut String,
) -> anyhow::Result<Vec<(String, Numbers, Numbers)>> {
    let (ferry, etcd) = start_pair().await?;
    let mut cases = cases(opts.scale);
    if let Some(only) = &opts.only {
        cases.retain(|c| c.command.contains(only.as_str()));
        if cases.is_empty() {
            return Err(anyhow!("no workload's command contains {only:?}"));
        }
    }
    let mut results: Vec<[Vec<Numbers>; 2]> =
        cases.iter().map(|_| [Vec::new(), Vec::new()]).collect();
    for round in 0..opts.rounds {
        for (i, case) in cases.iter().enumerate() {
            // A/B in even rounds, B/A in odd ones: neither server always runs on a warmer
            // (or more fragmented) machine.
            let order: [usize; 2] = if (round + i) % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let server = if which == 0 { &ferry } else { &etcd };
                let mut config = case.config.clone();
                config.connect = server.connect_config();
                if config.prefill
                    && matches!(
                        case.workload,
                        Workload::Range { .. } | Workload::TxnMixed { .. }
                    )
                {
                    // Written once, outside the measurement (CPU included).
                    let mut fill = config.clone();
                    fill.sequential_keys = true;
                    fill.limit = Limit::Total(fill.key_space_size);
                    fill.rate = None;
                    run(&fill, &Workload::Put).await?;
                    config.prefill = false;
                }
                let cpu_before = cpu_seconds(server);
                let report = run(&config, &case.workload)
                    .await
                    .with_context(|| format!("{} on {:?}", case.command, server.kind()))?;
                let mut n = numbers(&report, case.section)?;
                let ops = report
                    .sections
                    .iter()
                    .find(|s| s.name != "watch creation")
                    .map(|s| s.requests)
                    .unwrap_or(0);
                if ops > 0 {
                    n.cpu_us = (cpu_seconds(server) - cpu_before) * 1e6 / ops as f64;
                }
                eprintln!(
                    "round {} {:<70} {:>5}: {:>10.1}/s p50 {:>8.3} ms p99 {:>8.3} ms cpu {:>6.1} µs/op{}",
                    round + 1,
                    case.command,
                    if which == 0 { "ferry" } else { "etcd" },
                    n.throughput,
                    n.p50,
                    n.p99,
                    n.cpu_us,
                    if n.errors > 0 {
                        format!(" ({} errors)", n.errors)
                    } else {
                        String::new()
                    }
                );
                results[i][which].push(n);
            }
        }
    }
    md.push_str(&format!(
        "Medians of {} rounds, ferry and etcd alternating (A/B then B/A). Throughput in operations/s \
         (events/s for the watch rows), latencies in ms; server CPU is the server process's user+system time per \
         operation (per put for the watch rows), in µs.\n\n",
        opts.rounds
    ));
    md.push_str("| command | ferry ops/s | etcd ops/s | ferry/etcd | ferry p50 | etcd p50 | ferry p99 | etcd p99 | p99 ferry/etcd | server CPU ferry/etcd µs | errors |\n");
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut summary = Vec::new();
    for (case, [f, e]) in cases.iter().zip(results) {
        let med = |v: &[Numbers], g: fn(&Numbers) -> f64| median(v.iter().map(g).collect());
        let fm = Numbers {
            throughput: med(&f, |n| n.throughput),
            p50: med(&f, |n| n.p50),
            p99: med(&f, |n| n.p99),
            errors: f.iter().map(|n| n.errors).sum(),
            cpu_us: med(&f, |n| n.cpu_us),
        };
        let em = Numbers {
            throughput: med(&e, |n| n.throughput),
            p50: med(&e, |n| n.p50),
            p99: med(&e, |n| n.p99),
            errors: e.iter().map(|n| n.errors).sum(),
            cpu_us: med(&e, |n| n.cpu_us),
        };
        md.push_str(&format!(
            "| `{}` | {:.0} | {:.0} | **{}** | {:.2} | {:.2} | {:.2} | {:.2} | **{}** | {:.0} / {:.0} | {}/{} |\n",
            case.command,
            fm.throughput,
            em.throughput,
            ratio(fm.throughput, em.throughput),
            fm.p50,
            em.p50,
            fm.p99,
            em.p99,
            ratio(fm.p99, em.p99),
            fm.cpu_us,
            em.cpu_us,
            fm.errors,
            em.errors,
        ));
        summary.push((case.command.clone(), fm, em));
    }
    Ok(summary)
}

async fn check_perf(md: &mut String) -> anyhow::Result<Vec<(String, bool, bool)>> {
    let etcdctl = ferry_testkit::etcdctl_binary()?;
    md.push_str("\n`etcdctl check perf` (etcd 3.4's own verdict: throughput, slowest request, stddev), each load on freshly started servers:\n\n");
    md.push_str("| load | ferry | etcd |\n|---|---|---|\n");
    let mut verdicts = Vec::new();
    for load in ["m", "l", "xl"] {
        let (ferry, etcd) = start_pair().await?;
        let mut cells = Vec::new();
        for server in [&ferry, &etcd] {
            eprintln!(
                "etcdctl check perf --load={load} on {:?} (about a minute)",
                server.kind()
            );
            let out = Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &server.endpoint(),
                    "check",
                    "perf",
                    &format!("--load={load}"),
                ])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL"))
                .collect();
            let passed = out.status.success()
                && !lines.is_empty()
                && lines.iter().all(|l| l.starts_with("PASS"));
            eprintln!("  {}", lines.join(" / "));
            cells.push((passed, lines.join("; ")));
        }
        md.push_str(&format!(
            "| {load} | {} {} | {} {} |\n",
            if cells[0].0 { "**PASS**" } else { "**FAIL**" },
            cells[0].1,
            if cells[1].0 { "**PASS**" } else { "**FAIL**" },
            cells[1].1
        ));
        verdicts.push((load.to_string(), cells[0].0, cells[1].0));
    }
    Ok(verdicts)
}

async fn memory(opts: &Options, md: &mut String) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let (ferry, etcd) = start_pair().await?;
    let keys = ((1_000_000.0 * opts.scale) as u64).max(1000);
    let watches = ((10_000.0 * opts.scale) as usize).max(100);
    let leases = ((50_000.0 * opts.scale) as u64).max(100);
    let mut rows = vec![("idle".to_string(), rss_mib(&ferry)?, rss_mib(&etcd)?)];
    for server in [&ferry, &etcd] {
        eprintln!("loading {keys} keys of 256 bytes into {:?}", server.kind());
        let mut config = BenchConfig::new(server.connect_config());
        config.clients = 64;
        config.conns = 8;
        config.key_size = 16;
        config.val_size = 256;
        config.key_space_size = keys;
        config.sequential_keys = true;
        config.limit = Limit::Total(keys);
        let report = run(&config, &Workload::Put).await?;
        anyhow::ensure!(
            report.sections[0].errors == 0,
            "loading failed: {:?}",
            report.sections[0].first_error
        );
    }
    rows.push((
        format!("{keys} keys × 256 B values"),
        rss_mib(&ferry)?,
        rss_mib(&etcd)?,
    ));
    // Watches are held open while the memory is read.
    let mut held = Vec::new();
    for server in [&ferry, &etcd] {
        let mut config = BenchConfig::new(server.connect_config());
        config.conns = 4;
        config.limit = Limit::Total(10);
        let workload = Workload::Watch {
            watchers: watches,
            streams: 100,
            hold: Duration::from_secs(15),
        };
        held.push(tokio::spawn(async move { run(&config, &workload).await }));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    rows.push((
        format!("+ {watches} watches"),
        rss_mib(&ferry)?,
        rss_mib(&etcd)?,
    ));
    for h in held {
        h.await??;
    }
    for server in [&ferry, &etcd] {
        let mut config = BenchConfig::new(server.connect_config());
        config.clients = 64;
        config.conns = 8;
        config.limit = Limit::Total(leases);
        run(&config, &Workload::LeaseGrant { ttl: 600 }).await?;
    }
    rows.push((
        format!("+ {leases} leases (watches closed)"),
        rss_mib(&ferry)?,
        rss_mib(&etcd)?,
    ));
    md.push_str("\nResident memory (VmRSS) of each server process, same sequence on both:\n\n");
    md.push_str("| state | ferry MiB | etcd MiB | ferry/etcd |\n|---|---:|---:|---:|\n");
    for (state, f, e) in &rows {
        md.push_str(&format!(
            "| {state} | {f:.0} | {e:.0} | **{}** |\n",
            ratio(*f, *e)
        ));
    }
    Ok(rows)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let etcd = ferry_testkit::etcd_binary()
        .ok()
        .and_then(|b| Command::new(b).arg("--version").output().ok())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores, {mem} RAM, Linux {}; {etcd}; ferry at commit {commit}; load \
         generator: `ferry bench` in one process on the same machine.\n\n",
        kernel.trim()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let opts = options()?;
    let mut md = format!("{START}\n_Generated by `scripts/bench-compare.sh`._ ");
    md.push_str(&machine());
    let throughput = side_by_side(&opts, &mut md).await?;
    let perf = if opts.perf {
        check_perf(&mut md).await?
    } else {
        Vec::new()
    };
    let mem = if opts.memory {
        memory(&opts, &mut md).await?
    } else {
        Vec::new()
    };

    md.push_str("\nTargets:\n\n| target | result | met |\n|---|---|---|\n");
    let find = |prefix: &str| throughput.iter().find(|(c, _, _)| c.starts_with(prefix));
    if let Some((_, f, e)) = find("ferry bench put --clients 64") {
        let r = f.throughput / e.throughput;
        md.push_str(&format!(
            "| put, 64 clients: ≥ 2× etcd's throughput | {r:.2}× | {} |\n",
            if r >= 2.0 { "yes" } else { "no" }
        ));
        let p = f.p99 / e.p99;
        md.push_str(&format!(
            "| put, 64 clients: p99 ≤ 0.5× etcd's | {p:.2}× | {} |\n",
            if p <= 0.5 { "yes" } else { "no" }
        ));
    }
    if let Some((_, f, e)) = find("ferry bench range --consistency l") {
        let r = f.throughput / e.throughput;
        md.push_str(&format!(
            "| range (linearizable), 64 clients: ≥ 2× etcd's | {r:.2}× | {} |\n",
            if r >= 2.0 { "yes" } else { "no" }
        ));
    }
    // Issue 22's targets.
    let met = |ok: bool| if ok { "yes" } else { "no" };
    if let Some((_, f, e)) = find("ferry bench put --clients 1 ") {
        let r = f.throughput / e.throughput;
        md.push_str(&format!(
            "| put, 1 client: ≥ 1.2× etcd's throughput | {r:.2}× | {} |\n",
            met(r >= 1.2)
        ));
        md.push_str(&format!(
            "| put, 1 client: p50 ≤ etcd's | {:.2} / {:.2} ms | {} |\n",
            f.p50,
            e.p50,
            met(f.p50 <= e.p50)
        ));
    }
    if let Some((_, f, e)) = find("ferry bench put --clients 64") {
        let c = f.cpu_us / e.cpu_us;
        md.push_str(&format!(
            "| put, 64 clients: server CPU per put ≤ 0.5× etcd's | {c:.2}× | {} |\n",
            met(c <= 0.5)
        ));
    }
    if let Some((_, f, e)) = find("ferry bench watch --watchers") {
        let r = f.throughput / e.throughput;
        md.push_str(&format!(
            "| watch, 1,000 watchers: ≥ 1.5× etcd's events/s | {r:.2}× | {} |\n",
            met(r >= 1.5)
        ));
        let p = f.p99 / e.p99;
        md.push_str(&format!(
            "| watch, 1,000 watchers: p99 ≤ 0.1× etcd's | {p:.2}× | {} |\n",
            met(p <= 0.1)
        ));
    }
    if let Some((_, f, e)) = mem.iter().find(|(s, _, _)| s.contains("keys")) {
        let r = f / e;
        md.push_str(&format!(
            "| resident memory at 1M keys ≤ 0.5× etcd's | {r:.2}× | {} |\n",
            if r <= 0.5 { "yes" } else { "no" }
        ));
    }
    if let Some((_, f, _)) = perf.iter().find(|(l, _, _)| l == "xl") {
        md.push_str(&format!(
            "| `etcdctl check perf --load=xl` passes against ferry | {} | {} |\n",
            if *f { "PASS" } else { "FAIL" },
            if *f { "yes" } else { "no" }
        ));
    }
    md.push_str(&format!("{END}\n"));
    println!("{md}");
    if let (Some(file), None) = (&opts.write, &opts.only) {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let updated = match (text.find(START), text.find(END)) {
            (Some(a), Some(b)) if a < b => {
                format!("{}{}{}", &text[..a], md.trim_end(), &text[b + END.len()..])
            }
            _ => format!("{}\n{}", text.trim_end(), md),
        };
        std::fs::write(file, updated).with_context(|| format!("writing {}", file.display()))?;
        eprintln!("written to {}", file.display());
    }
    Ok(())
}
