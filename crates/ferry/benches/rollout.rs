//! Time from an API call to a "complete" rollout, for 10, 100 and 1,000 in-process agents
//! rendering without nginx, on the embedded store and on a real etcd 3.4 in the same run.
//!
//! Run on demand: `cargo bench -p ferry --bench rollout [-- [--disk] [--only embedded|process|etcd]
//! [--rounds N] AGENTS...]` (default 10 100 1000; `--only` measures one store and `--rounds`
//! makes the measured part long, to profile it). "Complete" is the moment the last live agent's status key reports the new
//! version, as seen through a watch opened before the call (what the API's status summary is
//! built from).
//!
//! The agents write their nginx.conf to tmpfs (`/dev/shm`) unless `--disk` is given: a real
//! fleet has a disk per host, while a thousand agents renaming files on this machine's one
//! ext4 disk measure its inode allocator, the same for both stores. The stores and the
//! controller's database stay on disk.
//!
//! 200 rounds below 1,000 agents (so the p99 is not just the slowest round), 20 at 1,000.
//! Three stores: ferry's embedded in this process (as `ferry up` runs it), ferry's as its own
//! process (`ferry store`), and etcd. "CPU ms per round" is the whole machine's cost of one
//! rollout: this process (agents, controller, their clients, and the embedded store) plus the
//! store's own process, shown apart: the agents' share is the same work on every store, so the
//! store processes' column compares the stores alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use ferry_agent::{AgentConfig, RunningAgent};
use ferry_controller::api::AgentStatus;
use ferry_controller::auth::Tokens;
use ferry_controller::keys::Keys;
use ferry_controller::server::ControllerConfig;
use ferry_testkit::{Kind, Server};

/// The allocator of the `ferry` binary that runs agents, controllers and the store.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Agents share one gRPC connection per this many, as a fleet behind a few proxies would.
const AGENTS_PER_CONNECTION: usize = 10;

fn document(version: usize) -> String {
    serde_json::json!({
        "kind": "ingress",
        "virtual_hosts": [{"hostname": format!("v{version}.example.com"),
                           "paths": [{"path": "/", "backends": ["127.0.0.1:9"]}]}],
    })
    .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Run {
    samples: Vec<Duration>,
    /// From the call to the API's answer (SQL commit and store write included).
    answers: Vec<Duration>,
    /// From the call to the first agent's status with the new version.
    firsts: Vec<Duration>,
    /// CPU time per round of this process (agents, controller, their clients; and the store
    /// when it is embedded).
    cpu_per_round: Duration,
    /// CPU time per round of the store's own process, when it has one.
    store_cpu_per_round: Option<Duration>,
}

/// CPU time used so far by this process and by `store_pid`, a store in its own process.
fn cpu(store_pid: Option<u32>) -> (Duration, Option<Duration>) {
    (
        ferry_testkit::process_cpu(None),
        store_pid.map(|p| ferry_testkit::process_cpu(Some(p))),
    )
}

async fn run(
    endpoint: &str,
    store_pid: Option<u32>,
    agents: usize,
    rounds: usize,
    disk: bool,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let shm = std::path::Path::new("/dev/shm");
    let outputs = if disk || !shm.is_dir() {
        tempfile::tempdir()?
    } else {
        tempfile::tempdir_in(shm)?
    };
    let config = ferry_client::ConnectConfig::new([endpoint]);
    let client = ferry_client::connect(&config).await?;
    let (tokens, token) = Tokens::generate("admin");
    let controller = ferry_controller::server::start(
        client.clone(),
        ControllerConfig {
            name: "bench".into(),
            database: format!("sqlite://{}", dir.path().join("ctl.db").display()),
            listen: "127.0.0.1:0".parse()?,
            root: "/ingress".into(),
            tokens,
            tokens_file: None,
            audit_log: None,
            tls: None,
            reconcile_interval: Duration::from_secs(300),
            preflight: Default::default(),
        },
    )
    .await?;
    let api = controller.local_addr.to_string();
    let mut running: Vec<RunningAgent> = Vec::new();
    let mut shared: Option<Client> = None;
    for n in 0..agents {
        if n % AGENTS_PER_CONNECTION == 0 {
            shared = Some(ferry_client::connect(&config).await?);
        }
        let agent_client = shared.clone().context("a connection")?;
        running.push(
            ferry_agent::start(
                agent_client,
                AgentConfig {
                    env: "bench".into(),
                    name: format!("agent-{n}"),
                    ip: "127.0.0.1".into(),
                    root: "/ingress".into(),
                    services_prefix: "/services".into(),
                    nginx_prefix: outputs.path().join(format!("agent-{n}")),
                    listen: "127.0.0.1:8080".into(),
                    tls_listen: "127.0.0.1:8443".into(),
                    template: None,
                    check_cmd: None,
                    reload_cmd: None,
                    resync: Duration::from_secs(3600),
                },
            )
            .await?,
        );
    }
    let keys = Keys::default();
    let mut watcher = client.clone();
    let call = |method: &'static str, path: String, body: String, if_match: Option<usize>| {
        let (api, token) = (api.clone(), token.clone());
        async move {
            let headers: Vec<(&str, String)> = if_match
                .map(|v| vec![("If-Match", v.to_string())])
                .unwrap_or_default();
            ferry_controller::http_client::request(
                &api,
                method,
                &path,
                Some(&token),
                &headers,
                &body,
            )
            .await
        }
    };
    let created = call(
        "POST",
        "/api/v1/environments/bench/configs".into(),
        document(1),
        None,
    )
    .await?;
    anyhow::ensure!(created.status == 201, "create: {}", created.body);
    let id = serde_json::from_str::<serde_json::Value>(&created.body)?["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = format!("/api/v1/environments/bench/configs/{id}");
    // Every agent live and done with version 1 before measuring.
    wait_all(
        &mut watcher,
        &keys,
        &id,
        agents,
        1,
        Duration::from_secs(120),
    )
    .await?;

    let mut samples = Vec::new();
    let mut answers = Vec::new();
    let mut firsts = Vec::new();
    let cpu_before = cpu(store_pid);
    for round in 0..rounds {
        let version = round + 2;
        let mut stream = watcher
            .watch(
                keys.statuses("bench", &id),
                Some(WatchOptions::new().with_prefix()),
            )
            .await?;
        // Measure only once the watch is in place (its first message confirms it).
        let first = stream.message().await?.context("watch ended")?;
        anyhow::ensure!(first.created(), "unexpected first watch message");
        let started = Instant::now();
        let reply = call("PUT", path.clone(), document(version), Some(version - 1)).await?;
        anyhow::ensure!(reply.status == 200, "update: {}", reply.body);
        answers.push(started.elapsed());
        let mut done: HashMap<String, ()> = HashMap::new();
        let deadline = started + Duration::from_secs(60);
        while done.len() < agents {
            let msg = tokio::time::timeout_at(deadline.into(), stream.message())
                .await
                .context("rollout did not complete in 60 s")??
                .context("watch ended")?;
            for ev in msg.events() {
                if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                    let status: AgentStatus = serde_json::from_slice(kv.value())?;
                    if status.ok && status.version == version as i64 {
                        if done.is_empty() {
                            firsts.push(started.elapsed());
                        }
                        done.insert(status.agent, ());
                    }
                }
            }
        }
        samples.push(started.elapsed());
    }
    let cpu_after = cpu(store_pid);
    let per_round =
        |after: Duration, before: Duration| after.saturating_sub(before) / rounds as u32;
    let cpu_per_round = per_round(cpu_after.0, cpu_before.0);
    let store_cpu_per_round = cpu_after.1.zip(cpu_before.1).map(|(a, b)| per_round(a, b));
    // The API agrees: complete at the last version.
    let status = call("GET", format!("{path}/status"), String::new(), None).await?;
    let status: serde_json::Value = serde_json::from_str(&status.body)?;
    anyhow::ensure!(
        status["summary"]["complete"] == true && status["summary"]["live"] == agents,
        "API status after the runs: {status}"
    );
    for a in running {
        a.stop().await;
    }
    controller.stop().await;
    Ok(Run {
        samples,
        answers,
        firsts,
        cpu_per_round,
        store_cpu_per_round,
    })
}

async fn wait_all(
    client: &mut Client,
    keys: &Keys,
    id: &str,
    agents: usize,
    version: i64,
    limit: Duration,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    loop {
        let resp = client
            .get(
                keys.statuses("bench", id),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let applied = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<AgentStatus>(kv.value()).ok())
            .filter(|s| s.version == version)
            .count();
        if applied == agents {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < until,
            "{applied}/{agents} agents applied version {version}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fmt(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // As `ferry up --log-level warn` logs: with no subscriber at all, every span the HTTP/2
    // stack opens would go through tracing's `log` fallback instead of being filtered out.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let disk = args.iter().any(|a| a == "--disk");
    let option = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args.get(i + 1).cloned().unwrap_or_default())
    };
    let only = option("--only");
    let fixed_rounds = option("--rounds")
        .map(|r| {
            r.parse::<usize>()
                .with_context(|| format!("--rounds {r:?}"))
        })
        .transpose()?;
    if let Some(o) = &only {
        anyhow::ensure!(
            ["embedded", "process", "etcd"].contains(&o.as_str()),
            "--only takes embedded, process or etcd, not {o:?}"
        );
    }
    let sizes: Vec<usize> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !a.starts_with("--")
                && (*i == 0 || !matches!(args[i - 1].as_str(), "--only" | "--rounds"))
        })
        .map(|(_, a)| a)
        .map(|a| a.parse().with_context(|| format!("agent count {a:?}")))
        .collect::<anyhow::Result<_>>()?;
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    let bench_dir = tempfile::tempdir()?;
    let mut store_config = ferry_store::StoreConfig::new(bench_dir.path().join("store"));
    store_config.listen_client_urls = vec!["http://127.0.0.1:0".into()];
    let embedded = ferry_store::start_on_own_runtime(store_config).await?;
    let embedded_endpoint = embedded.local_addrs[0].to_string();
    let ferry_bin = std::path::Path::new(env!("CARGO_BIN_EXE_ferry"));
    let own_process = Server::start(Kind::Ferry, ferry_bin, &[]).await?;
    let etcd = Server::start(Kind::Etcd, ferry_bin, &[]).await?;
    let on_disk = disk || !std::path::Path::new("/dev/shm").is_dir();
    println!(
        "agents write nginx.conf to {}",
        if on_disk { "disk" } else { "tmpfs (/dev/shm)" }
    );
    println!("| agents | store | rounds | p50 ms | p99 ms | max ms | API answer p50 ms | first agent p50 ms | CPU ms per round | of which the store's process |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &agents in &sizes {
        // With fewer than 100 rounds the p99 is the slowest round.
        let rounds = fixed_rounds.unwrap_or(if agents >= 1000 { 20 } else { 200 });
        for (key, name, endpoint, store_pid) in [
            (
                "embedded",
                "ferry (embedded)",
                embedded_endpoint.clone(),
                None,
            ),
            (
                "process",
                "ferry store (own process)",
                own_process.endpoint(),
                own_process.pid(),
            ),
            ("etcd", "etcd 3.4", etcd.endpoint(), etcd.pid()),
        ] {
            if only.as_deref().is_some_and(|o| o != key) {
                continue;
            }
            // Each run under its own prefix state: clear what the previous run left.
            let mut c =
                ferry_client::connect(&ferry_client::ConnectConfig::new([endpoint.as_str()]))
                    .await?;
            c.delete(
                "/ingress",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await?;
            let mut result = run(&endpoint, store_pid, agents, rounds, disk).await?;
            result.samples.sort();
            result.answers.sort();
            result.firsts.sort();
            let store_cpu = result.store_cpu_per_round;
            println!(
                "| {agents} | {name} | {rounds} | {} | {} | {} | {} | {} | {} | {} |",
                fmt(percentile(&result.samples, 50.0)),
                fmt(percentile(&result.samples, 99.0)),
                fmt(*result.samples.last().unwrap_or(&Duration::ZERO)),
                fmt(percentile(&result.answers, 50.0)),
                fmt(percentile(&result.firsts, 50.0)),
                fmt(result.cpu_per_round + store_cpu.unwrap_or_default()),
                store_cpu.map(fmt).unwrap_or_else(|| "(in process)".into()),
            );
        }
    }
    Ok(())
}
