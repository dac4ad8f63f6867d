//! What a leader kill costs ferry's components on a real 3-member etcd 3.4 cluster, side by
//! side with etcd's own Go client (`etcdctl`) in the same run.
//!
//! Run on demand: `cargo bench -p ferry --bench failover [-- ROUNDS]` (default 20). Each
//! round kills the leader (`kill -9`) and measures, from the kill:
//! - ferry: the first successful write through a client created before the kill (all three
//!   endpoints listed), and the moment an informer (opened before the kill) delivers it;
//! - etcdctl: the first successful `etcdctl put` with the same endpoints, tried in a loop
//!   concurrently (each try is a new process, so its figure includes a process start);
//!
//! and, over the whole run, the registrations announced again while their lease lived
//! (goal 0) and the acknowledged writes the informer never delivered (goal 0).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_registry::{announce, AnnounceConfig, AnnounceState, Instance};
use ferry_runtime::{Event, Informer, InformerConfig};
use ferry_testkit::EtcdCluster;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(name: &str, samples: &mut [Duration]) -> String {
    samples.sort();
    format!(
        "| {name} | {:.0} | {:.0} | {:.0} |",
        percentile(samples, 50.0).as_secs_f64() * 1000.0,
        percentile(samples, 99.0).as_secs_f64() * 1000.0,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
    )
}

/// `etcdctl put` in a loop until one succeeds; the time from `start`.
fn etcdctl_until_ok(endpoints: String, start: Instant, round: usize) -> anyhow::Result<Duration> {
    let etcdctl = ferry_testkit::etcdctl_binary()?;
    loop {
        let ok = Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .args([
                &format!("--endpoints={endpoints}"),
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "put",
                "/failover/etcdctl",
                &round.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if ok {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "etcdctl never wrote"
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let mut cluster = EtcdCluster::start(3).await?;
    // The same command timeout as etcdctl's below: the first write after a leader kill is
    // usually lost with the leader, and both clients then wait for exactly this long.
    let mut config = cluster.connect_config();
    config.request_timeout = Duration::from_secs(2);
    let endpoints = cluster.endpoints().join(",");
    let announcement = announce(
        ferry_client::connect(&config).await?,
        AnnounceConfig::default(),
        Instance::new("bench", "i1", "127.0.0.1:1"),
    )
    .await?;
    let AnnounceState::Live { lease: first_lease } = announcement.state() else {
        anyhow::bail!("the announcement is not live");
    };
    let informer: Informer<serde_json::Value> = Informer::start(
        ferry_client::connect(&config).await?,
        InformerConfig::new("/failover/ferry"),
    );
    informer.wait_for_sync().await;
    let mut events = informer.subscribe();
    let mut writer = ferry_client::connect(&config).await?;
    let (mut write, mut watch, mut ctl) = (Vec::new(), Vec::new(), Vec::new());
    let mut acknowledged = Vec::new();
    let mut delivered = Vec::new();
    for round in 1..=rounds {
        let leader = cluster.leader().await?;
        let start = Instant::now();
        cluster.kill(leader);
        let ctl_task = {
            let endpoints = endpoints.clone();
            tokio::task::spawn_blocking(move || etcdctl_until_ok(endpoints, start, round))
        };
        loop {
            if writer
                .put("/failover/ferry", round.to_string(), None)
                .await
                .is_ok()
            {
                write.push(start.elapsed());
                acknowledged.push(round as u64);
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(60),
                "ferry never wrote"
            );
        }
        loop {
            let event = tokio::time::timeout(Duration::from_secs(60), events.recv()).await?;
            if let Some(Event::Added(o))
            | Some(Event::Updated {
                new: o,
                resync: false,
                ..
            }) = event
            {
                let value = o.value.as_u64().unwrap_or(0);
                delivered.push(value);
                if value == round as u64 {
                    watch.push(start.elapsed());
                    break;
                }
            }
        }
        ctl.push(ctl_task.await??);
        cluster.restart(leader)?;
        cluster.wait_healthy().await?;
        eprintln!(
            "round {round}/{rounds}: ferry write {:?}, watch {:?}, etcdctl {:?}",
            write.last(),
            watch.last(),
            ctl.last()
        );
    }
    let reannounced = match announcement.state() {
        AnnounceState::Live { lease } if lease == first_lease => 0,
        _ => 1,
    };
    let lost = acknowledged
        .iter()
        .filter(|v| !delivered.contains(v))
        .count();
    println!(
        "leader kills: {rounds}, 3-member etcd 3.4 cluster on loopback, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!("| from the leader kill to | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    println!("{}", summary("first write, ferry client", &mut write));
    println!(
        "{}",
        summary("first write, etcdctl (new process per try)", &mut ctl)
    );
    println!(
        "{}",
        summary("write delivered by a ferry informer", &mut watch)
    );
    println!(
        "spurious re-registrations: {reannounced}; acknowledged writes never delivered: {lost}"
    );
    announcement.stop().await?;
    Ok(())
}
