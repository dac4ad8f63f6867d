//! `ferry sync` replicas as processes, finding each other through the registry on
//! `ferry store` and on a real etcd 3.4: a write on one is readable on all, bad input changes
//! nothing, a killed replica restarted later bootstraps to the others' state (deletes
//! included), a paused one is repaired by anti-entropy; five replicas agree after a join
//! under a steady write load, a kill -9 mid fan-out and concurrent writes to one key (every
//! acknowledged write present or superseded by a higher version); deletes made while a
//! replica is paused past the tombstone grace are not undone when it returns.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ingress::Proc;
use common::{ferry_bin, Server};
use serde_json::Value;

against_both!(&[];
    replicas_converge_through_kills_pauses_and_deletes,
    five_replicas_agree_after_a_join_under_load_a_kill_and_concurrent_writes,
    deletes_during_a_pause_past_the_grace_are_not_undone,
);

struct Replica {
    http: String,
    args: Vec<String>,
    proc: Proc,
}

impl Replica {
    fn start(endpoint: &str, id: &str) -> anyhow::Result<Self> {
        Self::start_with(endpoint, id, &[])
    }

    fn start_with(endpoint: &str, id: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let http = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
        let args: Vec<String> = [
            "sync",
            "--endpoints",
            endpoint,
            "--service",
            "cache",
            "--id",
            id,
            "--http-listen",
            &http,
            "--anti-entropy-interval",
            "1s",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let proc = Proc(spawn(&args)?);
        Ok(Self { http, args, proc })
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.proc = Proc(spawn(&self.args)?);
        Ok(())
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, Value)> {
        let reply =
            ferry_controller::http_client::request(&self.http, method, path, None, &[], body)
                .await?;
        Ok((
            reply.status,
            serde_json::from_str(&reply.body).unwrap_or(Value::Null),
        ))
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.call("GET", "/readyz", "").await {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < until, "replica {} never ready", self.http);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let reply =
            ferry_controller::http_client::request(&self.http, "GET", "/metrics", None, &[], "")
                .await?;
        reply
            .body
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no metric {name} in {}", reply.body))
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.proc.0.id().to_string();
        anyhow::ensure!(
            Command::new("kill")
                .args([signal, &pid])
                .status()?
                .success(),
            "kill {signal} {pid}"
        );
        Ok(())
    }

    async fn entries(&self) -> anyhow::Result<Value> {
        let (status, body) = self.call("GET", "/v1/cache/1", "").await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        Ok(body["entries"].clone())
    }
}

fn spawn(args: &[String]) -> anyhow::Result<std::process::Child> {
    Ok(Command::new(ferry_bin())
        .args(args)
        .env(
            "FERRY_LOG",
            std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()?)
}

async fn all_equal(replicas: &[Replica], expected: &Value) -> anyhow::Result<()> {
    all_agree(replicas, expected, &Default::default()).await
}

/// Waits until every replica holds the same map, which is `expected` but for the
/// `unacknowledged` keys (written without an answer: the write may or may not have been
/// applied, but all replicas must agree on it).
async fn all_agree(
    replicas: &[Replica],
    expected: &Value,
    unacknowledged: &std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let mut seen = Vec::new();
        for r in replicas {
            seen.push(r.entries().await.unwrap_or(Value::Null));
        }
        let without_unacknowledged = |v: &Value| -> Value {
            let mut v = v.clone();
            if let Some(map) = v.as_object_mut() {
                map.retain(|k, _| !unacknowledged.contains(k));
            }
            v
        };
        let expected = &without_unacknowledged(expected);
        if seen.windows(2).all(|w| w[0] == w[1])
            && seen.iter().all(|s| without_unacknowledged(s) == *expected)
        {
            return Ok(());
        }
        if Instant::now() > until {
            let differences: Vec<String> = seen
                .iter()
                .zip(replicas)
                .map(|(s, r)| {
                    format!(
                        "{}: against the expected map: {}; against the first replica: {}",
                        r.http,
                        difference(&without_unacknowledged(s), expected),
                        difference(s, &seen[0])
                    )
                })
                .collect();
            anyhow::bail!("replicas differ: {differences:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The keys where `seen` and `expected` differ, with both values (short, for failures).
fn difference(seen: &Value, expected: &Value) -> String {
    let (Some(seen), Some(expected)) = (seen.as_object(), expected.as_object()) else {
        return format!("{seen} instead of a map");
    };
    let keys: std::collections::BTreeSet<&String> = seen.keys().chain(expected.keys()).collect();
    keys.into_iter()
        .filter(|k| seen.get(*k) != expected.get(*k))
        .take(10)
        .map(|k| format!("{k}: {:?} (want {:?})", seen.get(k), expected.get(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn replicas_converge_through_kills_pauses_and_deletes(server: &Server) -> anyhow::Result<()> {
    let endpoint = server.endpoint();
    let mut replicas = Vec::new();
    for id in ["r1", "r2", "r3"] {
        let r = Replica::start(&endpoint, id)?;
        r.wait_ready().await?;
        replicas.push(r);
    }
    let put = |value: &str| serde_json::json!({ "value": value }).to_string();
    let (status, _) = replicas[0]
        .call("PUT", "/v1/cache/1/greeting", &put("hello"))
        .await?;
    assert_eq!(status, 200);
    all_equal(&replicas, &serde_json::json!({"greeting": "hello"})).await?;

    // Bad input: 400 with a reason, nothing changes.
    for (path, body, reason) in [
        ("/v1/cache/x/k", put("v"), "is not a 32-bit integer"),
        (
            "/v1/cache/1/k",
            r#"{"value":"v","ttl":5}"#.to_string(),
            "unknown field",
        ),
        ("/v1/cache/1/k", "not json".to_string(), "must be"),
        ("/v1/cache/1/k", put(&"x".repeat((1 << 20) + 1)), "over"),
    ] {
        let (status, answer) = replicas[1].call("PUT", path, &body).await?;
        assert_eq!(status, 400, "{path} {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains(reason),
            "{answer}"
        );
    }
    all_equal(&replicas, &serde_json::json!({"greeting": "hello"})).await?;

    // kill -9 of a replica; writes and a delete meanwhile; it comes back with all of them.
    replicas[2].proc.kill9();
    for i in 0..10 {
        replicas[0]
            .call("PUT", &format!("/v1/cache/1/k{i}"), &put(&i.to_string()))
            .await?;
    }
    replicas[1]
        .call("DELETE", "/v1/cache/1/greeting", "")
        .await?;
    let expected: Value = (0..10)
        .map(|i| (format!("k{i}"), Value::from(i.to_string())))
        .collect::<serde_json::Map<_, _>>()
        .into();
    replicas[2].restart()?;
    replicas[2].wait_ready().await?;
    all_equal(&replicas, &expected).await?;

    // A paused replica (longer than the fan-out retries) misses writes; anti-entropy repairs it.
    let pid = replicas[1].proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()?
        .success());
    replicas[0]
        .call("PUT", "/v1/cache/1/during", &put("pause"))
        .await?;
    replicas[2].call("DELETE", "/v1/cache/1/k0", "").await?;
    // Longer than every fan-out attempt (3 tries of up to 2 s each, with their delays).
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()?
        .success());
    let mut expected = expected;
    if let Some(map) = expected.as_object_mut() {
        map.remove("k0");
        map.insert("during".into(), "pause".into());
    }
    all_equal(&replicas, &expected).await?;
    // The counters say what happened: writes fanned out from r1, r3 bootstrapped.
    let metrics = |r: &Replica| {
        let http = r.http.clone();
        async move {
            ferry_controller::http_client::request(&http, "GET", "/metrics", None, &[], "")
                .await
                .map(|reply| reply.body)
        }
    };
    let r1 = metrics(&replicas[0]).await?;
    assert!(r1.contains("ferry_sync_ready 1"), "{r1}");
    assert!(
        !r1.contains("ferry_sync_fanout_delivered_total 0\n"),
        "{r1}"
    );
    let r3 = metrics(&replicas[2]).await?;
    assert!(!r3.contains("ferry_sync_bootstrap_seconds 0\n"), "{r3}");
    assert!(r3.contains("ferry_sync_entries 10"), "{r3}");
    Ok(())
}

/// A write the replica acknowledged: the key, the value (`None`: deleted) and its version.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: Option<String>,
    version: uhlc::Timestamp,
    /// How many replicas held it when it was acknowledged.
    replicas: u64,
}

/// PUTs (or DELETEs, with `None`) and returns the acknowledgement, or `None` when refused or
/// unreachable.
async fn write(http: &str, key: &str, value: Option<&str>) -> Option<Ack> {
    let (method, body) = match value {
        Some(v) => ("PUT", serde_json::json!({ "value": v }).to_string()),
        None => ("DELETE", String::new()),
    };
    let path = format!("/v1/cache/1/{key}");
    let reply = ferry_controller::http_client::request(http, method, &path, None, &[], &body)
        .await
        .ok()?;
    if reply.status != 200 {
        return None;
    }
    let answer: Value = serde_json::from_str(&reply.body).ok()?;
    let version = answer["version"].as_str()?.parse().ok()?;
    Some(Ack {
        key: key.to_string(),
        value: value.map(str::to_string),
        version,
        replicas: answer["replicas"].as_u64()?,
    })
}

/// The map every replica must end with: per key, the acknowledged write with the highest
/// version (so each acknowledged write is present or superseded by a higher version).
fn expected_from(acks: &[Ack]) -> Value {
    let mut newest: std::collections::BTreeMap<&str, &Ack> = Default::default();
    for ack in acks {
        let slot = newest.entry(&ack.key).or_insert(ack);
        if ack.version > slot.version {
            *slot = ack;
        }
    }
    newest
        .into_iter()
        .filter_map(|(k, a)| a.value.clone().map(|v| (k.to_string(), Value::from(v))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Writes on the given replicas in turn until `stop`: new keys, and three keys written again
/// and again from different replicas; returns what was acknowledged, and the keys of writes
/// whose answer never came.
fn steady_load(
    https: Vec<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(Vec<Ack>, Vec<String>)> {
    tokio::spawn(async move {
        let mut acks = Vec::new();
        let mut unanswered = Vec::new();
        let mut i = 0usize;
        while !*stop.borrow() {
            let http = &https[i % https.len()];
            let key = if i.is_multiple_of(4) {
                format!("shared{}", i % 3)
            } else {
                format!("w{i}")
            };
            match write(http, &key, Some(&format!("v{i}"))).await {
                Some(ack) => acks.push(ack),
                None => unanswered.push(key),
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (acks, unanswered)
    })
}

async fn five_replicas_agree_after_a_join_under_load_a_kill_and_concurrent_writes(
    server: &Server,
) -> anyhow::Result<()> {
    let endpoint = server.endpoint();
    let mut replicas = Vec::new();
    for id in ["r1", "r2", "r3", "r4"] {
        let r = Replica::start(&endpoint, id)?;
        r.wait_ready().await?;
        replicas.push(r);
    }
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // r2 is killed mid-load: writes it acknowledged must survive it.
    let load = steady_load(replicas.iter().map(|r| r.http.clone()).collect(), stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A fifth replica joins while writes keep coming.
    let joining = Replica::start(&endpoint, "r5")?;
    joining.wait_ready().await?;
    replicas.push(joining);
    // r2 is killed in the middle of a burst of writes on it: each one it acknowledged was
    // held by a peer by then.
    let (stop_burst, burst_stop) = tokio::sync::watch::channel(false);
    let burst: Vec<_> = (0..8)
        .map(|t| {
            let http = replicas[1].http.clone();
            let stop = burst_stop.clone();
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let mut attempted = Vec::new();
                let mut i = 0;
                while !*stop.borrow() {
                    let key = format!("burst{t}-{i}");
                    match write(&http, &key, Some("b")).await {
                        Some(ack) => acks.push(ack),
                        None => attempted.push(key),
                    }
                    i += 1;
                }
                (acks, attempted)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    replicas[1].proc.kill9();
    stop_burst.send_replace(true);
    let mut burst_acks = Vec::new();
    let mut unacknowledged = std::collections::BTreeSet::new();
    for task in burst {
        let (acks, attempted) = task.await?;
        burst_acks.extend(acks);
        unacknowledged.extend(attempted);
    }
    // Every peer was up: each write on r2 was acknowledged once another replica held it.
    anyhow::ensure!(
        burst_acks.iter().all(|a| a.replicas >= 2),
        "acknowledged with one copy: {:?}",
        burst_acks
            .iter()
            .filter(|a| a.replicas < 2)
            .take(3)
            .collect::<Vec<_>>()
    );
    anyhow::ensure!(
        burst_acks.len() > 10,
        "only {} burst writes",
        burst_acks.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same key written on two replicas at the same moment.
    let (a, b) = tokio::join!(
        write(&replicas[0].http, "race", Some("from-r1")),
        write(&replicas[2].http, "race", Some("from-r3")),
    );
    replicas[1].restart()?;
    replicas[1].wait_ready().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send_replace(true);
    let (mut acks, unanswered) = load.await?;
    anyhow::ensure!(acks.len() > 100, "only {} writes acknowledged", acks.len());
    acks.extend(a.into_iter().chain(b));
    acks.extend(burst_acks);
    anyhow::ensure!(
        acks.iter().filter(|a| a.key == "race").count() == 2,
        "both racing writes acknowledged"
    );
    unacknowledged.extend(unanswered);
    let expected = expected_from(&acks);
    all_agree(&replicas, &expected, &unacknowledged).await?;
    Ok(())
}

async fn deletes_during_a_pause_past_the_grace_are_not_undone(
    server: &Server,
) -> anyhow::Result<()> {
    let endpoint = server.endpoint();
    let grace = ["--tombstone-grace", "4s"];
    let mut replicas = Vec::new();
    for id in ["r1", "r2", "r3"] {
        let r = Replica::start_with(&endpoint, id, &grace)?;
        r.wait_ready().await?;
        replicas.push(r);
    }
    let mut acks = Vec::new();
    for i in 0..10 {
        acks.extend(write(&replicas[0].http, &format!("k{i}"), Some("v")).await);
    }
    all_equal(&replicas, &expected_from(&acks)).await?;
    // r3 stops answering (a partition) holding every key. Once its registration has expired
    // the others no longer send it anything (as when packets are dropped): they delete half
    // of the keys and write a new one, and collect the tombstones once the grace has passed.
    replicas[2].signal("-STOP")?;
    let until = Instant::now() + Duration::from_secs(30);
    while replicas[0].metric("ferry_sync_peers").await? > 1.0 {
        anyhow::ensure!(Instant::now() < until, "r3's registration never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..5 {
        acks.extend(write(&replicas[1].http, &format!("k{i}"), None).await);
    }
    acks.extend(write(&replicas[0].http, "after", Some("pause")).await);
    let until = Instant::now() + Duration::from_secs(30);
    for r in &replicas[..2] {
        while r.metric("ferry_sync_tombstones").await? > 0.0
            || r.metric("ferry_sync_tombstones_collected_total").await? < 5.0
        {
            anyhow::ensure!(Instant::now() < until, "tombstones never collected");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    replicas[2].signal("-CONT")?;
    // r3 finds it was out of touch for longer than the grace, resyncs in full, and the
    // deleted keys it still held never come back anywhere.
    let expected = expected_from(&acks);
    all_equal(&replicas, &expected).await?;
    let until = Instant::now() + Duration::from_secs(20);
    while replicas[2].metric("ferry_sync_full_resyncs_total").await? < 1.0 {
        anyhow::ensure!(Instant::now() < until, "r3 never resynced");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Several more anti-entropy rounds: still nothing deleted returns.
    tokio::time::sleep(Duration::from_secs(3)).await;
    all_equal(&replicas, &expected).await?;
    Ok(())
}

/// A client generated from the original `.proto` by another gRPC implementation (Python's
/// grpcio-tools, which `scripts/install-deps.sh` installs) calls Set, Get and GetAll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_of_the_original_proto_works_unchanged() -> anyhow::Result<()> {
    let server = common::start(common::Kind::Ferry, &[]).await?;
    let endpoint = server.endpoint();
    let grpc = format!("127.0.0.1:{}", ferry_testkit::free_port()?);
    let r1 = Replica::start_with(&endpoint, "r1", &["--grpc-listen", &grpc])?;
    r1.wait_ready().await?;
    let r2 = Replica::start(&endpoint, "r2")?;
    r2.wait_ready().await?;
    let (status, _) = r2
        .call("PUT", "/v1/cache/4/other", r#"{"value":"x"}"#)
        .await?;
    assert_eq!(status, 200);
    // Type 4 has reached r1 before the client asks for every type.
    let until = Instant::now() + Duration::from_secs(10);
    while r1.call("GET", "/v1/cache/4/other", "").await?.0 != 200 {
        anyhow::ensure!(Instant::now() < until, "type 4 never reached r1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = tempfile::tempdir()?;
    let client = fixtures.join("sync_client.py");
    let run = Command::new("python3")
        .arg(&client)
        .arg(&fixtures)
        .arg(out.path())
        .arg(&grpc)
        .output()
        .map_err(|e| anyhow::anyhow!("python3: {e}; run scripts/install-deps.sh"))?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    anyhow::ensure!(
        !stderr.contains("No module named"),
        "Python's gRPC packages are missing ({stderr}); run scripts/install-deps.sh, which installs grpcio and grpcio-tools"
    );
    anyhow::ensure!(run.status.success(), "the Python client failed: {stderr}");
    let got: Value = serde_json::from_slice(&run.stdout)?;
    assert_eq!(
        got["get"],
        serde_json::json!([{"type": 3, "data": {"a": "1"}}]),
        "Get returns the requested keys that exist"
    );
    assert_eq!(
        got["get_all"],
        serde_json::json!([
            {"type": 3, "data": {"a": "1", "b": "2"}},
            {"type": 4, "data": {"other": "x"}},
        ]),
        "GetAll with no type returns every type"
    );
    assert_eq!(
        got["get_all_type"],
        serde_json::json!([{"type": 3, "data": {"a": "1", "b": "2"}}])
    );
    // The client's Set was stamped by r1 and fanned out.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = r2.call("GET", "/v1/cache/3", "").await?;
        if status == 200 && body["entries"] == serde_json::json!({"a": "1", "b": "2"}) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "the Python client's Set never reached r2: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
