//! Peer sync against what users would pick instead, side by side in one run:
//! - ferry-sync: N replicas, each serving `hellorpc.Sync` on loopback (in one process, as a
//!   service embedding the library would), a write on one fanned out to the others;
//! - Redis (Debian's `redis-server`): one primary and N-1 replicas, each its own process; a
//!   `SET` on the primary, seen through keyspace notifications on every replica;
//! - etcd 3.4 as the cache: one member, a put, N-1 watchers (each its own connection).
//!
//! Run on demand: `cargo bench -p ferry --bench sync [-- ENTRIES]` (default 1,000,000 for the
//! bootstrap). It prints Markdown tables for docs/BENCHMARKS.md:
//! 1. write → visible on every other replica: p50/p99 of sequential writes, and writes/s of a
//!    burst (all sent at once, timed until the last is on every replica), for 3, 5 and 10;
//! 2. bootstrap of a new replica from a peer holding ENTRIES entries of ~200 B while 1,000
//!    writes/s go on (ferry: streamed snapshot + one digest round; Redis: full sync);
//! 3. convergence after a replica missed 10,000 writes (ferry: the digest round that repairs
//!    it; Redis: a SIGSTOP'ed replica resumed, until its offset is the primary's);
//! 4. one anti-entropy round on an idle, converged pair holding ENTRIES entries: bytes on the
//!    wire and CPU time.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{EventType, WatchOptions};
use ferry_sync::anti_entropy::{round, snapshot_from};
use ferry_sync::proto::{DigestRequest, DigestResponse};
use ferry_sync::{Replica, ReplicaConfig, SyncService};
use ferry_testkit::{free_port, Kind, Server};
use futures::StreamExt;
use prost::Message;

const REPLICA_COUNTS: [usize; 3] = [3, 5, 10];
const SEQUENTIAL_WRITES: usize = 300;
const BURST_WRITES: usize = 5000;
const MISSED_WRITES: usize = 10_000;

fn value() -> String {
    "v".repeat(200)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One system's figures for N replicas.
struct Propagation {
    p50: Duration,
    p99: Duration,
    writes_per_second: f64,
}

impl Propagation {
    fn new(mut samples: Vec<Duration>, burst: Duration) -> Self {
        samples.sort();
        Self {
            p50: percentile(&samples, 50.0),
            p99: percentile(&samples, 99.0),
            writes_per_second: BURST_WRITES as f64 / burst.as_secs_f64(),
        }
    }
}

// ---- ferry-sync ------------------------------------------------------------------------

async fn serve(replica: &Replica) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(SyncService::new(replica.clone()).serve(listener));
    Ok(addr)
}

async fn ferry_cluster(n: usize) -> anyhow::Result<(Vec<Replica>, Vec<String>)> {
    let replicas: Vec<Replica> = (0..n).map(|_| Replica::new()).collect();
    let addrs = ferry_sync::serve_local_cluster(&replicas).await?;
    Ok((replicas, addrs))
}

async fn ferry_propagation(n: usize) -> anyhow::Result<Propagation> {
    let (replicas, _) = ferry_cluster(n).await?;
    let value = value();
    // Warm the connections.
    replicas[0].set(9, "warm", "up");
    wait_until(|| replicas.iter().all(|r| r.get(9, "warm").is_some())).await?;
    let mut samples = Vec::new();
    let mut changes: Vec<_> = replicas[1..].iter().map(|r| r.subscribe()).collect();
    for i in 0..SEQUENTIAL_WRITES {
        let key = format!("seq{i}");
        let start = Instant::now();
        replicas[0].set(1, &key, &value);
        for rx in &mut changes {
            loop {
                let change = rx.recv().await?;
                if change.key == key {
                    break;
                }
            }
        }
        samples.push(start.elapsed());
    }
    let start = Instant::now();
    for i in 0..BURST_WRITES {
        replicas[0].set(2, &format!("burst{i}"), &value);
    }
    wait_until(|| replicas.iter().all(|r| r.values(2).len() == BURST_WRITES)).await?;
    Ok(Propagation::new(samples, start.elapsed()))
}

async fn wait_until(check: impl Fn() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(120);
    while !check() {
        anyhow::ensure!(Instant::now() < until, "never converged");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

// ---- Redis -----------------------------------------------------------------------------

/// A `redis-server` process on a free loopback port, stopped (by PID) when dropped.
struct RedisServer {
    port: u16,
    child: Child,
    client: redis::Client,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    async fn start(primary: Option<u16>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir();
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--dbfilename".into(),
            format!("ferry-bench-{port}.rdb"),
            // Full syncs straight over the socket, as a disk-less cache would run.
            "--repl-diskless-sync".into(),
            "yes".into(),
            "--repl-diskless-sync-delay".into(),
            "0".into(),
            "--repl-diskless-load".into(),
            "on-empty-db".into(),
            "--notify-keyspace-events".into(),
            "K$".into(),
            "--enable-debug-command".into(),
            "local".into(),
        ];
        if let Some(primary) = primary {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!("redis-server: {e}; run scripts/install-deps.sh (redis-server)")
            })?;
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let server = Self {
            port,
            child,
            client,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while server.connection().await.is_err() {
            anyhow::ensure!(
                Instant::now() < until,
                "redis-server on {port} never answered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        self.client.get_multiplexed_async_connection().await
    }

    async fn info(&self) -> anyhow::Result<String> {
        let mut con = self.connection().await?;
        Ok(redis::cmd("INFO")
            .arg("replication")
            .query_async::<String>(&mut con)
            .await?)
    }

    /// Waits until this replica has finished its sync with the primary.
    async fn wait_synced(&self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(300);
        loop {
            let info = self.info().await.unwrap_or_default();
            if info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0")
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < until, "replica {} never synced", self.port);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn offset(&self, field: &str) -> anyhow::Result<i64> {
        let info = self.info().await?;
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {field} in INFO"))
    }
}

async fn redis_propagation(n: usize) -> anyhow::Result<Propagation> {
    let primary = RedisServer::start(None).await?;
    let mut replicas = Vec::new();
    for _ in 1..n {
        replicas.push(RedisServer::start(Some(primary.port)).await?);
    }
    for r in &replicas {
        r.wait_synced().await?;
    }
    let mut notifications = Vec::new();
    for r in &replicas {
        let mut pubsub = r.client.get_async_pubsub().await?;
        pubsub.psubscribe("__keyspace@0__:*").await?;
        notifications.push(pubsub.into_on_message());
    }
    let mut con = primary.connection().await?;
    let value = value();
    let mut samples = Vec::new();
    for i in 0..SEQUENTIAL_WRITES {
        let key = format!("seq{i}");
        let channel = format!("__keyspace@0__:{key}");
        let start = Instant::now();
        redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query_async::<()>(&mut con)
            .await?;
        for stream in &mut notifications {
            loop {
                let msg = stream
                    .next()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("notification stream ended"))?;
                if msg.get_channel_name() == channel {
                    break;
                }
            }
        }
        samples.push(start.elapsed());
    }
    let start = Instant::now();
    let writes = (0..BURST_WRITES).map(|i| {
        let mut con = con.clone();
        let value = value.clone();
        async move {
            redis::cmd("SET")
                .arg(format!("burst{i}"))
                .arg(value)
                .query_async::<()>(&mut con)
                .await
        }
    });
    for result in futures::future::join_all(writes).await {
        result?;
    }
    let expected = SEQUENTIAL_WRITES + BURST_WRITES;
    for r in &replicas {
        let mut con = r.connection().await?;
        loop {
            let size: usize = redis::cmd("DBSIZE").query_async(&mut con).await?;
            if size == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok(Propagation::new(samples, start.elapsed()))
}

// ---- etcd ------------------------------------------------------------------------------

async fn etcd_propagation(n: usize) -> anyhow::Result<Propagation> {
    let server = Server::start(
        Kind::Etcd,
        std::path::Path::new(env!("CARGO_BIN_EXE_ferry")),
        &[],
    )
    .await?;
    let mut client = server.client().await?;
    let mut watches = Vec::new();
    for _ in 1..n {
        let mut watcher_client = server.client().await?;
        let stream = watcher_client
            .watch("/cache/", Some(WatchOptions::new().with_prefix()))
            .await?;
        watches.push((stream, HashSet::new()));
    }
    let value = value();
    let mut samples = Vec::new();
    for i in 0..SEQUENTIAL_WRITES {
        let key = format!("/cache/seq{i}");
        let start = Instant::now();
        client.put(key.as_str(), value.as_str(), None).await?;
        for (stream, _) in &mut watches {
            'found: loop {
                let resp = stream
                    .message()
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
                for e in resp.events() {
                    if e.event_type() == EventType::Put
                        && e.kv().is_some_and(|kv| kv.key() == key.as_bytes())
                    {
                        break 'found;
                    }
                }
            }
        }
        samples.push(start.elapsed());
    }
    let start = Instant::now();
    let writes = (0..BURST_WRITES).map(|i| {
        let mut client = client.clone();
        let value = value.clone();
        async move {
            client
                .put(format!("/cache/burst{i}"), value, None)
                .await
                .map(|_| ())
        }
    });
    for result in futures::stream::iter(writes)
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
    {
        result?;
    }
    for (stream, seen) in &mut watches {
        while seen.len() < BURST_WRITES {
            let resp = stream
                .message()
                .await?
                .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
            for e in resp.events() {
                if let Some(kv) = e.kv() {
                    if kv.key().starts_with(b"/cache/burst") {
                        seen.insert(kv.key().to_vec());
                    }
                }
            }
        }
    }
    Ok(Propagation::new(samples, start.elapsed()))
}

// ---- bootstrap, convergence, idle anti-entropy ---------------------------------------

/// Writes `rate` per second on `replica` until `stop`.
fn steady_writes(
    replica: Replica,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        let value = value();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            replica.set(3, &format!("live{i}"), &value);
            i += 1;
        }
    })
}

fn cpu_time() -> Duration {
    ferry_testkit::process_cpu(None)
}

/// Bootstrap and repair times of one system.
struct Recovery {
    bootstrap: Duration,
    repair: Duration,
}

async fn ferry_bootstrap_and_repair(entries: usize) -> anyhow::Result<Recovery> {
    let source = Replica::new();
    let source_addr = serve(&source).await?;
    let value = value();
    for i in 0..entries {
        source.set(1, &format!("key{i:08}"), &value);
    }
    let joining = Replica::with_config(ReplicaConfig {
        ready: false,
        ..ReplicaConfig::default()
    });
    let joining_addr = serve(&joining).await?;
    source.set_peers(std::slice::from_ref(&joining_addr));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = steady_writes(source.clone(), 1000, stop.clone());
    let start = Instant::now();
    snapshot_from(&joining, &source_addr).await?;
    round(&joining, &source_addr).await?;
    let bootstrap = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    round(&joining, &source_addr).await?;
    anyhow::ensure!(
        joining.digests() == source.digests(),
        "the joined replica differs"
    );

    // Idle, converged: what one anti-entropy round costs.
    let rounds = 50;
    let cpu = cpu_time();
    let wall = Instant::now();
    for _ in 0..rounds {
        let outcome = round(&joining, &source_addr).await?;
        anyhow::ensure!(outcome.buckets_differing == 0, "not converged: {outcome:?}");
    }
    let per_round_wall = wall.elapsed() / rounds;
    let per_round_cpu = (cpu_time().saturating_sub(cpu)) / rounds;
    let bytes = DigestRequest {}.encoded_len()
        + DigestResponse {
            buckets: source.digests(),
            replica: source.id(),
            seq: source.seq(),
        }
        .encoded_len();
    println!(
        "\nIdle anti-entropy round ({entries} entries, both sides in this process): {bytes} B of \
         protobuf payload, {:.2} ms wall, {:.2} ms CPU (both sides)",
        ms(per_round_wall),
        ms(per_round_cpu)
    );

    // A replica that missed writes: the round that repairs it.
    source.set_peers(&[]);
    for i in 0..MISSED_WRITES {
        source.set(4, &format!("missed{i}"), &value);
    }
    let start = Instant::now();
    let outcome = round(&joining, &source_addr).await?;
    let repair = start.elapsed();
    anyhow::ensure!(outcome.repaired_here == MISSED_WRITES, "{outcome:?}");
    Ok(Recovery { bootstrap, repair })
}

async fn redis_bootstrap_and_repair(entries: usize) -> anyhow::Result<Recovery> {
    let primary = RedisServer::start(None).await?;
    let mut con = primary.connection().await?;
    redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(entries)
        .arg("key")
        .arg(200)
        .query_async::<()>(&mut con)
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut con = con.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let value = value();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let _ = redis::cmd("SET")
                    .arg(format!("live{i}"))
                    .arg(&value)
                    .query_async::<()>(&mut con)
                    .await;
                i += 1;
            }
        })
    };
    let start = Instant::now();
    let replica = RedisServer::start(Some(primary.port)).await?;
    replica.wait_synced().await?;
    let bootstrap = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.await?;

    // A replica stopped while MISSED_WRITES land on the primary, then resumed.
    let pid = replica.child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status()?;
    let value = value();
    for i in 0..MISSED_WRITES {
        redis::cmd("SET")
            .arg(format!("missed{i}"))
            .arg(&value)
            .query_async::<()>(&mut con)
            .await?;
    }
    let target = primary.offset("master_repl_offset").await?;
    let start = Instant::now();
    Command::new("kill").args(["-CONT", &pid]).status()?;
    loop {
        if replica.offset("slave_repl_offset").await.unwrap_or(0) >= target {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "never caught up");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Recovery {
        bootstrap,
        repair: start.elapsed(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let entries: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    println!(
        "Write on one replica -> visible on all others ({SEQUENTIAL_WRITES} sequential writes of 200 B; \
         a burst of {BURST_WRITES})\n"
    );
    println!("| replicas | system | p50 ms | p99 ms | burst writes/s | p50 vs ferry | writes/s vs ferry |");
    println!("|---|---|---|---|---|---|---|");
    for n in REPLICA_COUNTS {
        let ferry = ferry_propagation(n).await?;
        let redis = redis_propagation(n).await?;
        let etcd = etcd_propagation(n).await?;
        for (name, p) in [
            ("ferry-sync", &ferry),
            ("Redis", &redis),
            ("etcd (put + watchers)", &etcd),
        ] {
            println!(
                "| {n} | {name} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |",
                ms(p.p50),
                ms(p.p99),
                p.writes_per_second,
                p.p50.as_secs_f64() / ferry.p50.as_secs_f64(),
                p.writes_per_second / ferry.writes_per_second,
            );
        }
    }
    let ferry = ferry_bootstrap_and_repair(entries).await?;
    let redis = redis_bootstrap_and_repair(entries).await?;
    println!(
        "\n| {entries} entries of 200 B | ferry-sync | Redis | Redis / ferry |\n|---|---|---|---|"
    );
    println!(
        "| bootstrap under 1,000 writes/s (ferry: streamed snapshot + one digest round; Redis: \
         disk-less full sync, replica start to link up), s | {:.2} | {:.2} | {:.2} |",
        ferry.bootstrap.as_secs_f64(),
        redis.bootstrap.as_secs_f64(),
        redis.bootstrap.as_secs_f64() / ferry.bootstrap.as_secs_f64()
    );
    println!(
        "| a replica that missed {MISSED_WRITES} writes (ferry: the digest round that repairs \
         it; Redis: SIGCONT to its offset caught up), ms | {:.0} | {:.0} | {:.2} |",
        ms(ferry.repair),
        ms(redis.repair),
        redis.repair.as_secs_f64() / ferry.repair.as_secs_f64()
    );
    Ok(())
}
