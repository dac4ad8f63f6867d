//! `ferry bench` against `ferry store` and a real etcd 3.4: every workload runs, does what it
//! says to the store, and reports consistent numbers; bad flags are refused with the reason.

mod common;

use std::process::Command;

use common::{ferry_bin, Server};
use etcd_client::GetOptions;

against_both!(&[];
    every_workload_reports_consistent_numbers,
    put_writes_the_key_space_and_leases_are_left_as_asked,
);

fn bench(server: &Server, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(ferry_bin())
        .arg("bench")
        .args(args)
        .args(["--endpoints", &server.endpoint(), "-o", "json"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ferry bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn section<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["sections"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// Counts, no errors, ordered percentiles, a histogram that adds up.
fn assert_consistent(s: &serde_json::Value, requests: u64) {
    assert_eq!(s["requests"].as_u64(), Some(requests), "{s}");
    assert_eq!(s["errors"].as_u64(), Some(0), "{s}");
    assert!(s["throughput"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    let l = &s["latency_ms"];
    let v: Vec<f64> = ["min", "p50", "p90", "p99", "max"]
        .iter()
        .map(|k| l[*k].as_f64().unwrap_or(-1.0))
        .collect();
    assert!(v[0] > 0.0 && v.windows(2).all(|w| w[0] <= w[1]), "{l}");
    let histogram: u64 = s["histogram"]
        .as_array()
        .map(|b| b.iter().filter_map(|b| b["count"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(histogram, requests, "{s}");
}

async fn every_workload_reports_consistent_numbers(server: &Server) -> anyhow::Result<()> {
    let common = ["--clients", "4", "--conns", "2", "--total", "200"];
    for (args, name) in [
        (vec!["put", "--key-space-size", "50"], "put"),
        (vec!["range", "--key-space-size", "50"], "range"),
        (
            vec!["range", "--consistency", "s", "--key-space-size", "50"],
            "range",
        ),
        (
            vec!["txn-put", "--txn-ops", "3", "--key-space-size", "1000"],
            "txn",
        ),
        (
            vec!["txn-mixed", "--rw-ratio", "3", "--key-space-size", "50"],
            "txn",
        ),
        (vec!["lease-keepalive"], "keep-alive"),
    ] {
        let report = bench(server, &[args.as_slice(), &common].concat())?;
        assert_eq!(report["clients"], 4);
        assert_consistent(section(&report, name), 200);
    }
    // Watch: every watcher gets every put.
    let report = bench(
        server,
        &[
            "watch",
            "--watchers",
            "20",
            "--streams",
            "4",
            "--clients",
            "2",
            "--total",
            "50",
        ],
    )?;
    assert_consistent(section(&report, "watch creation"), 20);
    assert_consistent(section(&report, "put"), 50);
    assert_consistent(section(&report, "event delivery"), 50 * 20);
    // Paced: 20 puts at 200/s take at least ~95 ms.
    let report = bench(
        server,
        &[
            "watch-latency",
            "--watchers",
            "3",
            "--total",
            "20",
            "--rate",
            "200",
        ],
    )?;
    assert_consistent(section(&report, "event delivery"), 60);
    assert!(
        section(&report, "put")["elapsed_seconds"]
            .as_f64()
            .unwrap_or(0.0)
            >= 0.09
    );
    // A duration instead of a total.
    let report = bench(server, &["put", "--duration", "300ms"])?;
    let put = section(&report, "put");
    let elapsed = put["elapsed_seconds"].as_f64().unwrap_or(0.0);
    assert!((0.3..2.0).contains(&elapsed), "{put}");
    assert!(put["requests"].as_u64().unwrap_or(0) > 0);
    Ok(())
}

async fn put_writes_the_key_space_and_leases_are_left_as_asked(
    server: &Server,
) -> anyhow::Result<()> {
    bench(
        server,
        &[
            "put",
            "--sequential-keys",
            "--key-space-size",
            "300",
            "--total",
            "300",
            "--key-size",
            "24",
            "--val-size",
            "100",
            "--clients",
            "8",
        ],
    )?;
    let mut c = server.client().await?;
    let resp = c.get("b/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(resp.kvs().len(), 300);
    assert!(resp
        .kvs()
        .iter()
        .all(|kv| kv.key().len() == 24 && kv.value().len() == 100));
    // lease-keepalive revokes its leases; lease-grant leaves them for their TTL.
    bench(
        server,
        &["lease-keepalive", "--clients", "3", "--total", "30"],
    )?;
    assert!(c.leases().await?.leases().is_empty());
    bench(
        server,
        &[
            "lease-grant",
            "--ttl",
            "120",
            "--total",
            "25",
            "--clients",
            "5",
        ],
    )?;
    assert_eq!(c.leases().await?.leases().len(), 25);
    Ok(())
}

#[test]
fn bad_flags_are_refused_with_the_reason() -> anyhow::Result<()> {
    for (args, reason) in [
        (vec!["put", "--clients", "0"], "--clients"),
        (vec!["put", "--total", "0"], "--total"),
        (vec!["put", "--duration", "soon"], "--duration"),
        (vec!["put", "--rate=-5"], "--rate"),
        (vec!["put", "--key-space-size", "0"], "--key-space-size"),
        (vec!["watch", "--watchers", "0"], "--watchers"),
        (vec!["txn-mixed", "--rw-ratio=-1"], "--rw-ratio"),
        (vec!["lease-grant", "--ttl", "0"], "--ttl"),
        (
            vec!["put", "--total", "5", "--duration", "1s"],
            "--duration",
        ),
    ] {
        // Nothing listens on port 9: a refused flag must be reported before connecting.
        let out = Command::new(ferry_bin())
            .arg("bench")
            .args(&args)
            .args(["--endpoints", "127.0.0.1:9", "--dial-timeout", "200ms"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    Ok(())
}
