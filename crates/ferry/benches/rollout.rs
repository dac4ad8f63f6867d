//! Time from an API call to a "complete" rollout, for 10, 100 and 1,000 in-process agents
//! rendering without nginx, on the embedded store and on a real etcd 3.4 in the same run.
//!
//! Run on demand: `cargo bench -p ferry --bench rollout [-- [--disk] [--only
//! embedded|process|etcd] [--rounds N] [--blocks B] [--warmup W] AGENTS...]` (default 10 100
//! 1000; `--only` measures one store and `--rounds` makes the measured part long, to profile
//! it). "Complete" is the moment the last live agent's status key reports the new version, as
//! seen through a watch opened before the call (what the API's status summary is built from).
//!
//! The agents write their nginx.conf to tmpfs (`/dev/shm`) unless `--disk` is given: a real
//! fleet has a disk per host, while a thousand agents renaming files on this machine's one
//! ext4 disk measure its inode allocator, the same for both stores. The stores and the
//! controller's database stay on disk.
//!
//! Three stores: ferry's embedded in this process (as `ferry up` runs it), ferry's as its own
//! process (`ferry store`), and etcd. The rounds are taken in `B` blocks (default 5): in each
//! block every store in turn starts a fleet (a controller and its agents, every agent done
//! with version 1), runs `W` unmeasured rounds (default 5), then its share of the measured
//! rounds, and stops it, so that the shared machine's slow spells fall on every store alike
//! instead of on whichever ran then. 200 measured rounds per store below 1,000 agents, 100 at
//! 1,000, so that the p99 is not just the slowest round.
//!
//! After the table, each ferry store's p99 over etcd's in the same run, per fleet size, and
//! every round that took over twice its store's p50, with its block, when the API answered
//! and the controller's steps before that answer (its `/metrics` read after each round): a
//! round slow before its answer was held up before the publication, in the step named.
//!
//! "CPU ms per round" is the whole machine's cost of one rollout, measured over the store's
//! rounds: this process (agents, controller, their clients, and the embedded store) plus the
//! store's own process, shown apart: the agents' share is the same work on every store, so the
//! store processes' column compares the stores alone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use ferry_agent::{AgentConfig, RunningAgent};
use ferry_controller::api::{AgentStatus, ChangeStep};
use ferry_controller::auth::Tokens;
use ferry_controller::keys::Keys;
use ferry_controller::server::ControllerConfig;
use ferry_testkit::{Kind, Server};

/// The allocator of the `ferry` binary that runs agents, controllers and the store.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The peer's name in the table.
const ETCD: &str = "etcd 3.4";

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

/// One store's fleet: a controller and its agents, with one configuration every agent has
/// applied, ready for rounds.
struct Fleet {
    name: &'static str,
    store_pid: Option<u32>,
    agents: usize,
    api: String,
    token: String,
    id: String,
    path: String,
    keys: Keys,
    step_totals: [f64; 4],
    watcher: Client,
    running: Vec<RunningAgent>,
    controller: ferry_controller::server::RunningController,
    _dirs: [tempfile::TempDir; 2],
}

/// What one store's rounds measured, over all its blocks.
#[derive(Default)]
struct Tally {
    /// From the call to the last agent's status with the new version.
    samples: Vec<Duration>,
    /// From the call to the API's answer (SQL commit and store write included).
    answers: Vec<Duration>,
    /// From the call to the first agent's status with the new version.
    firsts: Vec<Duration>,
    /// CPU time during the rounds of this process (agents, controller, their clients; and
    /// the store when it is embedded), and of the store's own process.
    cpu: Duration,
    store_cpu: Duration,
    /// The block being measured, and each round's block and times in the order taken.
    block: usize,
    rounds: Vec<RoundTimes>,
}

/// One round's block and times: its answer, first agent and last agent, and the
/// controller's steps before the answer.
struct RoundTimes {
    block: usize,
    answer: Duration,
    first: Duration,
    last: Duration,
    steps: StepTimes,
}

/// The controller's change steps, in the order of `ChangeStep::ALL`.
type StepTimes = [Duration; 4];

/// The controller's total time per step so far, from its `/metrics`.
async fn step_totals(api: &str, token: &str) -> anyhow::Result<[f64; 4]> {
    let reply = call(api, token, "GET", "/metrics", "", None).await?;
    let mut totals = [0.0; 4];
    for (total, step) in totals.iter_mut().zip(ChangeStep::ALL) {
        let series = format!(
            "ferry_controller_change_step_duration_seconds_sum{{step=\"{}\"}}",
            step.label()
        );
        *total = ferry_testkit::metric_value(&reply.body, &series).unwrap_or_default();
    }
    Ok(totals)
}

/// CPU time used so far by this process and by `store_pid`, a store in its own process.
fn cpu(store_pid: Option<u32>) -> (Duration, Duration) {
    (
        ferry_testkit::process_cpu(None),
        store_pid
            .map(|p| ferry_testkit::process_cpu(Some(p)))
            .unwrap_or_default(),
    )
}

async fn call(
    api: &str,
    token: &str,
    method: &'static str,
    path: &str,
    body: &str,
    if_match: Option<usize>,
) -> anyhow::Result<ferry_controller::http_client::HttpReply> {
    let headers: Vec<(&str, String)> = if_match
        .map(|v| vec![("If-Match", v.to_string())])
        .unwrap_or_default();
    Ok(
        ferry_controller::http_client::request(api, method, path, Some(token), &headers, body)
            .await?,
    )
}

impl Fleet {
    /// Starts a controller and `agents` agents on `endpoint`, creates the configuration and
    /// waits until every agent has applied it.
    async fn start(
        name: &'static str,
        endpoint: &str,
        store_pid: Option<u32>,
        agents: usize,
        disk: bool,
    ) -> anyhow::Result<Fleet> {
        // Each fleet under its own prefix state: clear what an earlier one left.
        let config = ferry_client::ConnectConfig::new([endpoint]);
        let mut client = ferry_client::connect(&config).await?;
        client
            .delete(
                "/ingress",
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await?;
        let dir = tempfile::tempdir()?;
        let shm = std::path::Path::new("/dev/shm");
        let outputs = if disk || !shm.is_dir() {
            tempfile::tempdir()?
        } else {
            tempfile::tempdir_in(shm)?
        };
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
        let created = call(
            &api,
            &token,
            "POST",
            "/api/v1/environments/bench/configs",
            &document(1),
            None,
        )
        .await?;
        anyhow::ensure!(created.status == 201, "create: {}", created.body);
        let id = serde_json::from_str::<serde_json::Value>(&created.body)?["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let path = format!("/api/v1/environments/bench/configs/{id}");
        let keys = Keys::default();
        // Every agent live and done with version 1 before measuring.
        wait_all(&mut client, &keys, &id, agents, 1, Duration::from_secs(120)).await?;
        let step_totals = step_totals(&api, &token).await?;
        Ok(Fleet {
            name,
            store_pid,
            agents,
            api,
            token,
            id,
            path,
            keys,
            step_totals,
            watcher: client,
            running,
            controller,
            _dirs: [dir, outputs],
        })
    }

    /// One rollout: the configuration's next version through the API, until every agent
    /// reports it.
    async fn round(&mut self, version: usize, tally: &mut Tally) -> anyhow::Result<()> {
        let mut stream = self
            .watcher
            .watch(
                self.keys.statuses("bench", &self.id),
                Some(WatchOptions::new().with_prefix()),
            )
            .await?;
        // Measure only once the watch is in place (its first message confirms it).
        let first = stream.message().await?.context("watch ended")?;
        anyhow::ensure!(first.created(), "unexpected first watch message");
        let cpu_before = cpu(self.store_pid);
        let started = Instant::now();
        let reply = call(
            &self.api,
            &self.token,
            "PUT",
            &self.path,
            &document(version),
            Some(version - 1),
        )
        .await?;
        anyhow::ensure!(reply.status == 200, "update: {}", reply.body);
        let answered = started.elapsed();
        tally.answers.push(answered);
        let mut first = Duration::ZERO;
        let mut done: HashMap<String, ()> = HashMap::new();
        let deadline = started + Duration::from_secs(60);
        while done.len() < self.agents {
            let msg = tokio::time::timeout_at(deadline.into(), stream.message())
                .await
                .context("rollout did not complete in 60 s")??
                .context("watch ended")?;
            for ev in msg.events() {
                if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                    let status: AgentStatus = serde_json::from_slice(kv.value())?;
                    if status.ok && status.version == version as i64 {
                        if done.is_empty() {
                            first = started.elapsed();
                            tally.firsts.push(first);
                        }
                        done.insert(status.agent, ());
                    }
                }
            }
        }
        let last = started.elapsed();
        let cpu_after = cpu(self.store_pid);
        tally.cpu += cpu_after.0.saturating_sub(cpu_before.0);
        tally.store_cpu += cpu_after.1.saturating_sub(cpu_before.1);
        // Read after the round, outside its time and CPU.
        let totals = step_totals(&self.api, &self.token).await?;
        let mut steps = StepTimes::default();
        for ((step, now), before) in steps.iter_mut().zip(totals).zip(self.step_totals) {
            *step = Duration::from_secs_f64((now - before).max(0.0));
        }
        self.step_totals = totals;
        tally.samples.push(last);
        tally.rounds.push(RoundTimes {
            block: tally.block,
            answer: answered,
            first,
            last,
            steps,
        });
        Ok(())
    }

    /// Checks that the API agrees (complete at the last version), then stops everything.
    async fn finish(self) -> anyhow::Result<()> {
        let status = call(
            &self.api,
            &self.token,
            "GET",
            &format!("{}/status", self.path),
            "",
            None,
        )
        .await?;
        let status: serde_json::Value = serde_json::from_str(&status.body)?;
        anyhow::ensure!(
            status["summary"]["complete"] == true && status["summary"]["live"] == self.agents,
            "{}: API status after the runs: {status}",
            self.name
        );
        for a in self.running {
            a.stop().await;
        }
        self.controller.stop().await;
        Ok(())
    }
}

impl Tally {
    /// The rounds that took over twice the store's p50, to be printed after the table: a
    /// tail's rounds, and whether they were slow before the publication (the answer) or
    /// after it.
    fn slow_rounds(&self, agents: usize, name: &str) -> Vec<String> {
        let mut sorted = self.samples.clone();
        sorted.sort();
        let p50 = percentile(&sorted, 50.0);
        let per_block = |block: usize| self.rounds.iter().filter(|r| r.block == block).count();
        let mut index_in_block = 0;
        let mut last_block = usize::MAX;
        let mut lines = Vec::new();
        for r in &self.rounds {
            if r.block != last_block {
                (last_block, index_in_block) = (r.block, 0);
            }
            index_in_block += 1;
            if r.last > p50 * 2 {
                let steps: Vec<String> = ChangeStep::ALL
                    .iter()
                    .zip(r.steps)
                    .map(|(step, took)| format!("{} {}", step.label(), fmt(took)))
                    .collect();
                lines.push(format!(
                    "- {agents} agents, {name}: block {} round {index_in_block} of {}: {} ms \
                     (API answer {} ms: {}; first agent {} ms; p50 {} ms)",
                    r.block + 1,
                    per_block(r.block),
                    fmt(r.last),
                    fmt(r.answer),
                    steps.join(", "),
                    fmt(r.first),
                    fmt(p50),
                ));
            }
        }
        lines
    }

    /// The store's line of the table; returns its p99.
    fn print(mut self, agents: usize, name: &str, own_process: bool) -> Duration {
        let rounds = self.samples.len();
        self.samples.sort();
        self.answers.sort();
        self.firsts.sort();
        let per_round = |total: Duration| total / rounds.max(1) as u32;
        println!(
            "| {agents} | {name} | {rounds} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(percentile(&self.samples, 50.0)),
            fmt(percentile(&self.samples, 99.0)),
            fmt(*self.samples.last().unwrap_or(&Duration::ZERO)),
            fmt(percentile(&self.answers, 50.0)),
            fmt(percentile(&self.firsts, 50.0)),
            fmt(per_round(self.cpu + self.store_cpu)),
            if own_process {
                fmt(per_round(self.store_cpu))
            } else {
                "(in process)".into()
            },
        );
        percentile(&self.samples, 99.0)
    }
}

/// Each ferry store's p99 over etcd's in the same run, per fleet size (issue 22's target
/// is at most 0.5).
fn print_ratios(p99s: &[(usize, Vec<(&str, Duration)>)]) {
    let mut lines = Vec::new();
    for (agents, stores) in p99s {
        let Some((_, etcd)) = stores.iter().find(|(name, _)| *name == ETCD) else {
            continue;
        };
        let ratios: Vec<String> = stores
            .iter()
            .filter(|(name, _)| *name != ETCD)
            .map(|(name, p99)| format!("{name} {:.2}×", p99.as_secs_f64() / etcd.as_secs_f64()))
            .collect();
        if !ratios.is_empty() {
            lines.push(format!("- {agents} agents: {}", ratios.join(", ")));
        }
    }
    if !lines.is_empty() {
        println!("\np99 over {ETCD}'s in this run:");
        lines.iter().for_each(|line| println!("{line}"));
    }
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
    let count = |name: &str| {
        option(name)
            .map(|v| v.parse::<usize>().with_context(|| format!("{name} {v:?}")))
            .transpose()
    };
    let fixed_rounds = count("--rounds")?;
    let blocks = count("--blocks")?.unwrap_or(5);
    let warmup = count("--warmup")?.unwrap_or(5);
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
                && (*i == 0
                    || !matches!(
                        args[i - 1].as_str(),
                        "--only" | "--rounds" | "--blocks" | "--warmup"
                    ))
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
    let mut p99s = Vec::new();
    let mut slow = Vec::new();
    for &agents in &sizes {
        // With fewer than 100 rounds the p99 is the slowest round.
        let rounds = fixed_rounds.unwrap_or(if agents >= 1000 { 100 } else { 200 });
        let stores: Vec<(&'static str, String, Option<u32>)> = [
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
            ("etcd", ETCD, etcd.endpoint(), etcd.pid()),
        ]
        .into_iter()
        .filter(|(key, ..)| only.as_deref().is_none_or(|o| o == *key))
        .map(|(_, name, endpoint, pid)| (name, endpoint, pid))
        .collect();
        let mut tallies: Vec<Tally> = stores.iter().map(|_| Tally::default()).collect();
        // The stores take turns, a block of rounds each, so that the shared machine's slow
        // spells fall on every store alike rather than on whichever ran then. Only the fleet
        // of the block's store runs: the others' agents would keep their leases alive
        // meanwhile, which costs etcd more CPU than ferry.
        let blocks = blocks.min(rounds).max(1);
        for block in 0..blocks {
            let in_block = rounds / blocks + usize::from(block < rounds % blocks);
            for ((name, endpoint, store_pid), tally) in stores.iter().zip(&mut tallies) {
                let mut fleet = Fleet::start(name, endpoint, *store_pid, agents, disk).await?;
                // A fresh fleet's configuration is at version 1. Its first rounds run while
                // the store still digests the fleet's start (1,000 registrations, statuses)
                // and are slower on every store: not measured.
                let mut unmeasured = Tally::default();
                for n in 0..warmup {
                    fleet.round(n + 2, &mut unmeasured).await?;
                }
                tally.block = block;
                for n in 0..in_block {
                    fleet.round(warmup + n + 2, tally).await?;
                }
                fleet.finish().await?;
            }
        }
        let p99 = stores
            .iter()
            .zip(tallies)
            .map(|((name, _, store_pid), tally)| {
                slow.extend(tally.slow_rounds(agents, name));
                (*name, tally.print(agents, name, store_pid.is_some()))
            })
            .collect();
        p99s.push((agents, p99));
    }
    print_ratios(&p99s);
    if !slow.is_empty() {
        println!("\nRounds over twice their store's p50:");
        slow.iter().for_each(|line| println!("{line}"));
    }
    // Stopped before its directory is removed, which its background checkpoint would
    // otherwise report as a storage failure.
    embedded.shutdown().await?;
    drop(bench_dir);
    Ok(())
}
