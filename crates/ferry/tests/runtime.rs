//! The controller runtime against `ferry store` and a real etcd 3.4: informer relist after
//! compaction, resume after a store restart, exclusive processing under a write storm,
//! backoff, panics, predicates, leader failover with fenced writes, the network example.

mod common;

#[allow(dead_code)]
#[path = "../../runtime/examples/network_controller.rs"]
mod network_controller;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Server;
use ferry_runtime::controller::changed;
use ferry_runtime::election::ElectionError;
use ferry_runtime::{
    Action, Controller, Election, Event, Informer, InformerConfig, Metrics, ReconcileError,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

against_both!(&[];
    informer_relists_after_compaction_and_delivers_tombstones,
    informer_resumes_after_a_store_restart_without_relisting,
    undecodable_values_are_skipped_and_counted,
    one_key_is_never_processed_twice_at_once,
    failures_back_off_and_panics_are_caught,
    predicates_keep_status_writes_from_retriggering,
    leader_fails_over_and_a_deposed_leader_cannot_write,
    network_example_converges,
    periodic_resync_replays_unchanged_objects,
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    spec: String,
    #[serde(default)]
    status: String,
}

fn item(spec: &str) -> String {
    serde_json::json!({ "spec": spec }).to_string()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn slow_reconnect(prefix: &str) -> InformerConfig {
    let mut config = InformerConfig::new(prefix);
    config.min_backoff = Duration::from_secs(4);
    config.max_backoff = Duration::from_secs(4);
    config
}

fn describe(event: &Event<Item>) -> String {
    match event {
        Event::Added(o) => format!("+{}={}", o.key, o.value.spec),
        Event::Updated { new, resync, .. } => format!(
            "~{}={}{}",
            new.key,
            new.value.spec,
            if *resync { " (resync)" } else { "" }
        ),
        Event::Deleted(o) => format!("-{}={}", o.key, o.value.spec),
    }
}

async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event<Item>>,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("informer stopped"))?;
        out.push(describe(&event));
    }
    Ok(out)
}

async fn informer_relists_after_compaction_and_delivers_tombstones(
    server: &Server,
) -> anyhow::Result<()> {
    let mut own = common::start(server.kind(), &[]).await?;
    let mut c = own.client().await?;
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        c.put(format!("/items/{k}"), item(v), None).await?;
    }
    let metrics = Metrics::new();
    let informer: Informer<Item> = Informer::start_with_metrics(
        own.client().await?,
        slow_reconnect("/items/"),
        Some(metrics.clone()),
    );
    informer.wait_for_sync().await;
    let mut events = informer.subscribe();
    assert_eq!(
        collect(&mut events, 3).await?,
        ["+/items/a=1", "+/items/b=2", "+/items/c=3"]
    );
    // While the informer is disconnected: delete b, change c, add d, and compact it all away.
    own.kill();
    own.restart().await?;
    let mut c = own.client().await?;
    c.delete("/items/b", None).await?;
    c.put("/items/c", item("33"), None).await?;
    let put = c.put("/items/d", item("4"), None).await?;
    let rev = put.header().map(|h| h.revision()).unwrap_or(0);
    c.compact(rev, None).await?;
    let mut got = collect(&mut events, 3).await?;
    got.sort();
    // The vanished key arrives as a delete carrying its last known state.
    assert_eq!(got, ["+/items/d=4", "-/items/b=2", "~/items/c=33"]);
    informer.cache().wait_for_revision(rev).await;
    let keys: Vec<String> = informer
        .cache()
        .list()
        .iter()
        .map(|o| format!("{}={}", o.key, o.value.spec))
        .collect();
    assert_eq!(keys, ["/items/a=1", "/items/c=33", "/items/d=4"]);
    assert!(
        metrics
            .encode()
            .contains("informer_relists_total{informer=\"/items/\"} 1"),
        "{}",
        metrics.encode()
    );
    Ok(())
}

async fn informer_resumes_after_a_store_restart_without_relisting(
    server: &Server,
) -> anyhow::Result<()> {
    let mut own = common::start(server.kind(), &[]).await?;
    let metrics = Metrics::new();
    let mut config = InformerConfig::new("/items/");
    config.min_backoff = Duration::from_millis(200);
    let informer: Informer<Item> =
        Informer::start_with_metrics(own.client().await?, config, Some(metrics.clone()));
    informer.wait_for_sync().await;
    let mut events = informer.subscribe();
    let mut c = own.client().await?;
    c.put("/items/x", item("1"), None).await?;
    assert_eq!(collect(&mut events, 1).await?, ["+/items/x=1"]);
    own.kill();
    own.restart().await?;
    let mut c = own.client().await?;
    c.put("/items/x", item("2"), None).await?;
    c.put("/items/y", item("1"), None).await?;
    c.delete("/items/x", None).await?;
    assert_eq!(
        collect(&mut events, 3).await?,
        ["~/items/x=2", "+/items/y=1", "-/items/x=2"]
    );
    assert!(
        !metrics.encode().contains("informer_relists_total{"),
        "resumed without a relist"
    );
    Ok(())
}

async fn undecodable_values_are_skipped_and_counted(server: &Server) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let mut c = server.client().await?;
    c.put("/items/bad-before", "not json", None).await?;
    let informer: Informer<Item> = Informer::start_with_metrics(
        server.client().await?,
        InformerConfig::new("/items/"),
        Some(metrics.clone()),
    );
    informer.wait_for_sync().await;
    let mut events = informer.subscribe();
    c.put("/items/bad-after", "{\"spec\": 5}", None).await?;
    c.put("/items/good", item("ok"), None).await?;
    assert_eq!(collect(&mut events, 1).await?, ["+/items/good=ok"]);
    assert_eq!(informer.cache().len(), 1);
    assert!(
        metrics
            .encode()
            .contains("informer_decode_errors_total{informer=\"/items/\"} 2"),
        "{}",
        metrics.encode()
    );
    Ok(())
}

async fn one_key_is_never_processed_twice_at_once(server: &Server) -> anyhow::Result<()> {
    const KEYS: usize = 10;
    const PUTS: usize = 100;
    let informer: Informer<Item> =
        Informer::start(server.client().await?, InformerConfig::new("/storm/"));
    let in_flight = Arc::new(Mutex::new(HashSet::<String>::new()));
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let last_seen = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let metrics = Metrics::new();
    let controller = Controller::new("storm", informer, metrics.clone()).workers(8);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let (in_flight, violations, last_seen) =
            (in_flight.clone(), violations.clone(), last_seen.clone());
        tokio::spawn(controller.run(
            move |key, cache| {
                let (in_flight, violations, last_seen) =
                    (in_flight.clone(), violations.clone(), last_seen.clone());
                async move {
                    if !in_flight.lock().insert(key.clone()) {
                        violations.lock().push(key.clone());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if let Some(o) = cache.get(&key) {
                        last_seen.lock().insert(key.clone(), o.value.spec.clone());
                    }
                    in_flight.lock().remove(&key);
                    Ok(Action::Done)
                }
            },
            async {
                let _ = stopped.await;
            },
        ))
    };
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = server.client().await?;
        writers.push(tokio::spawn(async move {
            for i in 0..PUTS {
                c.put(
                    format!("/storm/{}", (i + w) % KEYS),
                    item(&format!("{w}-{i}")),
                    None,
                )
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let mut c = server.client().await?;
    let mut finals = HashMap::new();
    for kv in c
        .get(
            "/storm/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?
        .kvs()
    {
        let it: Item = serde_json::from_slice(kv.value())?;
        finals.insert(String::from_utf8_lossy(kv.key()).into_owned(), it.spec);
    }
    assert_eq!(finals.len(), KEYS);
    eventually("every key reconciled at its final value", || {
        *last_seen.lock() == finals
    })
    .await?;
    let _ = stop.send(());
    run.await?;
    assert!(
        violations.lock().is_empty(),
        "keys processed concurrently: {:?}",
        violations.lock()
    );
    let text = metrics.encode();
    for name in [
        "workqueue_depth",
        "workqueue_adds_total",
        "workqueue_queue_duration_seconds",
        "workqueue_work_duration_seconds",
        "workqueue_unfinished_work_seconds",
        "workqueue_longest_running_processor_seconds",
        "reconcile_total",
        "reconcile_time_seconds",
    ] {
        assert!(text.contains(name), "metric {name} missing from:\n{text}");
    }
    assert!(text.contains("reconcile_total{controller=\"storm\",result=\"success\"}"));
    Ok(())
}

async fn failures_back_off_and_panics_are_caught(server: &Server) -> anyhow::Result<()> {
    let informer: Informer<Item> =
        Informer::start(server.client().await?, InformerConfig::new("/flaky/"));
    let metrics = Metrics::new();
    let controller = Controller::new("flaky", informer, metrics.clone());
    let queue = controller.queue();
    let attempts = Arc::new(Mutex::new(BTreeMap::<String, Vec<Instant>>::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = {
        let attempts = attempts.clone();
        tokio::spawn(controller.run(
            move |key, _cache| {
                let attempts = attempts.clone();
                async move {
                    let n = {
                        let mut a = attempts.lock();
                        let list = a.entry(key.clone()).or_default();
                        list.push(Instant::now());
                        list.len()
                    };
                    if key.ends_with("panics") && n == 1 {
                        panic!("reconcile panicked on purpose");
                    }
                    if key.ends_with("fails") && n <= 5 {
                        return Err(ReconcileError::Transient(format!("attempt {n} fails")));
                    }
                    if key.ends_with("terminal") {
                        return Err(ReconcileError::Terminal("bad spec".into()));
                    }
                    Ok(Action::Done)
                }
            },
            async {
                let _ = stopped.await;
            },
        ))
    };
    let mut c = server.client().await?;
    for k in ["fails", "panics", "terminal"] {
        c.put(format!("/flaky/{k}"), item(k), None).await?;
    }
    eventually("six attempts of the failing key", || {
        attempts.lock().get("/flaky/fails").map_or(0, |v| v.len()) >= 6
    })
    .await?;
    eventually("the panicking key retried", || {
        attempts.lock().get("/flaky/panics").map_or(0, |v| v.len()) >= 2
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = attempts.lock().clone();
    let times = &a["/flaky/fails"];
    // Per-key exponential backoff from 5 ms: each wait at least 5 ms × 2^n.
    for (n, pair) in times.windows(2).enumerate() {
        let floor = Duration::from_millis(5 * (1 << n));
        assert!(
            pair[1] - pair[0] >= floor,
            "retry {n} came after {:?}, before {floor:?}",
            pair[1] - pair[0]
        );
    }
    assert_eq!(
        queue.num_requeues(&"/flaky/fails".to_string()),
        0,
        "success forgets the failures"
    );
    assert_eq!(
        a["/flaky/terminal"].len(),
        1,
        "a terminal error is not retried"
    );
    let text = metrics.encode();
    assert!(
        text.contains("reconcile_panics_total{controller=\"flaky\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("reconcile_errors_total{controller=\"flaky\"} 7"),
        "{text}"
    );
    assert!(
        text.contains("workqueue_retries_total{name=\"flaky\"} 6"),
        "{text}"
    );
    let _ = stop.send(());
    run.await?;
    Ok(())
}

async fn predicates_keep_status_writes_from_retriggering(server: &Server) -> anyhow::Result<()> {
    let informer: Informer<Item> =
        Informer::start(server.client().await?, InformerConfig::new("/status/"));
    let controller = Controller::new("status", informer, Metrics::new())
        .with_predicate(changed(|i: &Item| i.spec.clone()));
    let runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = server.client().await?;
    let run = {
        let runs = runs.clone();
        tokio::spawn(controller.run(
            move |key, cache| {
                let (runs, mut client) = (runs.clone(), client.clone());
                async move {
                    let Some(obj) = cache.get(&key) else {
                        return Ok(Action::Done);
                    };
                    runs.lock().push(obj.value.spec.clone());
                    let mut updated = (*obj.value).clone();
                    updated.status = format!("applied {}", updated.spec);
                    let body = serde_json::to_string(&updated)
                        .map_err(|e| ReconcileError::Terminal(e.to_string()))?;
                    client
                        .put(key, body, None)
                        .await
                        .map_err(|e| ReconcileError::Transient(e.to_string()))?;
                    Ok(Action::Done)
                }
            },
            async {
                let _ = stopped.await;
            },
        ))
    };
    let mut c = server.client().await?;
    c.put("/status/x", item("v1"), None).await?;
    eventually("status written", || !runs.lock().is_empty()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        *runs.lock(),
        ["v1"],
        "the controller's own status write did not retrigger it"
    );
    c.put("/status/x", item("v2"), None).await?;
    eventually("spec change reconciled", || runs.lock().len() == 2).await?;
    let _ = stop.send(());
    run.await?;
    Ok(())
}

async fn leader_fails_over_and_a_deposed_leader_cannot_write(
    server: &Server,
) -> anyhow::Result<()> {
    let election = Election::new(server.client().await?, "/election/demo", 2);
    let a = election.campaign("a").await?;
    assert_eq!(
        election.leader().await?.map(|(_, v)| v),
        Some(b"a".to_vec())
    );
    a.fenced([etcd_client::TxnOp::put("/guarded", "by a", None)])
        .await?;
    let contender = {
        let election = election.clone();
        tokio::spawn(async move { election.campaign("b").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!contender.is_finished(), "b must wait while a leads");
    // a crashes: no resignation, its lease just stops being renewed.
    drop(a);
    let crashed = Instant::now();
    let b = tokio::time::timeout(Duration::from_secs(10), contender).await???;
    assert!(
        crashed.elapsed() < Duration::from_secs(2 + 2),
        "failover took {:?}",
        crashed.elapsed()
    );
    assert_eq!(
        election.leader().await?.map(|(_, v)| v),
        Some(b"b".to_vec())
    );
    b.fenced([etcd_client::TxnOp::put("/guarded", "by b", None)])
        .await?;
    // b loses its lease (as in a partition longer than the TTL): its writes are refused.
    let mut c = server.client().await?;
    let b_lease = i64::from_str_radix(b.key().rsplit('/').next().unwrap_or_default(), 16)?;
    c.lease_revoke(b_lease).await?;
    let refused = b
        .fenced([etcd_client::TxnOp::put("/guarded", "stale b", None)])
        .await;
    assert!(
        matches!(refused, Err(ElectionError::NotLeader(_))),
        "{refused:?}"
    );
    assert_eq!(c.get("/guarded", None).await?.kvs()[0].value(), b"by b");
    let mut observed = election.observe();
    let c2 = election.campaign("c").await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        observed.wait_for(|v| v.as_deref() == Some(b"c".as_slice())),
    )
    .await??;
    c2.resign().await?;
    assert_eq!(election.leader().await?, None);
    tokio::time::timeout(Duration::from_secs(10), observed.wait_for(|v| v.is_none())).await??;
    Ok(())
}

async fn network_example_converges(server: &Server) -> anyhow::Result<()> {
    use clap::Parser;
    use network_controller::{controller, reconcile, Cli, Network, Neutron, PREFIX};
    let neutron = Neutron::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Connected exactly as the example's main does, from its command line.
    let endpoint = server.endpoint();
    let cli = Cli::try_parse_from(["network_controller", "--endpoints", &endpoint])?;
    let client = cli.connection.connect().await?;
    let run = {
        let neutron = neutron.clone();
        tokio::spawn(controller(client, Metrics::new()).run(
            move |key, cache| reconcile(key, cache, neutron.clone()),
            async {
                let _ = stopped.await;
            },
        ))
    };
    let net = |cidr: &str, gw: &str| Network {
        cidr: cidr.into(),
        gateway: gw.into(),
    };
    let mut c = server.client().await?;
    let put = |n: &Network| serde_json::to_string(n).unwrap_or_default();
    c.put(
        format!("{PREFIX}default/blue"),
        put(&net("10.0.1.0/24", "10.0.1.1")),
        None,
    )
    .await?;
    c.put(
        format!("{PREFIX}default/red"),
        put(&net("10.0.2.0/24", "10.0.2.1")),
        None,
    )
    .await?;
    c.put(
        format!("{PREFIX}prod/green"),
        put(&net("10.1.0.0/16", "10.1.0.1")),
        None,
    )
    .await?;
    let expect = |pairs: &[(&str, Network)]| {
        pairs
            .iter()
            .map(|(k, n)| (k.to_string(), n.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let three = expect(&[
        ("default/blue", net("10.0.1.0/24", "10.0.1.1")),
        ("default/red", net("10.0.2.0/24", "10.0.2.1")),
        ("prod/green", net("10.1.0.0/16", "10.1.0.1")),
    ]);
    eventually("three networks created", || neutron.networks() == three).await?;
    c.put(
        format!("{PREFIX}default/blue"),
        put(&net("10.0.9.0/24", "10.0.9.1")),
        None,
    )
    .await?;
    c.delete(format!("{PREFIX}default/red"), None).await?;
    c.put(format!("{PREFIX}default/broken"), "not json", None)
        .await?;
    c.put(
        format!("{PREFIX}default/nomask"),
        put(&net("10.0.3.0", "10.0.3.1")),
        None,
    )
    .await?;
    let two = expect(&[
        ("default/blue", net("10.0.9.0/24", "10.0.9.1")),
        ("prod/green", net("10.1.0.0/16", "10.1.0.1")),
    ]);
    eventually("update and delete applied, bad specs ignored", || {
        neutron.networks() == two
    })
    .await?;
    let _ = stop.send(());
    run.await?;
    Ok(())
}

async fn periodic_resync_replays_unchanged_objects(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("/resync/a", item("1"), None).await?;
    let mut config = InformerConfig::new("/resync/");
    config.resync_period = Some(Duration::from_millis(300));
    let informer: Informer<Item> = Informer::start(server.client().await?, config);
    informer.wait_for_sync().await;
    let mut events = informer.subscribe();
    let got = collect(&mut events, 3).await?;
    assert_eq!(
        got,
        [
            "+/resync/a=1",
            "~/resync/a=1 (resync)",
            "~/resync/a=1 (resync)"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn network_example_takes_ferrys_connection_flags_and_refuses_others() {
    use clap::Parser;
    use network_controller::Cli;
    let cli = Cli::try_parse_from([
        "network_controller",
        "--endpoints",
        "127.0.0.1:1,127.0.0.1:2",
        "--dial-timeout",
        "300ms",
        "--user",
        "root:pw",
    ])
    .expect("ferry's flags parse");
    assert_eq!(cli.connection.endpoints, ["127.0.0.1:1", "127.0.0.1:2"]);
    let config = cli.connection.config().expect("a valid configuration");
    assert_eq!(config.dial_timeout, Duration::from_millis(300));
    assert_eq!(config.credentials, Some(("root".into(), "pw".into())));
    for (args, needle) in [
        (&["network_controller", "--bogus"][..], "Usage:"),
        (&["network_controller", "127.0.0.1:2379"][..], "Usage:"),
        (
            &["network_controller", "--dial-timeout", "soon"][..],
            "\"soon\" is not a duration",
        ),
    ] {
        let err = Cli::try_parse_from(args).expect_err("refused");
        assert!(err.render().to_string().contains(needle), "{args:?}: {err}");
    }
    // The original bug: a flag name taken as a host name and looked up forever.
    let cli = Cli::try_parse_from(["network_controller", "--endpoints=--endpoints"])
        .expect("parses; the endpoint is checked before dialling");
    let err = match tokio::time::timeout(Duration::from_secs(5), cli.connection.connect())
        .await
        .expect("refused at once, not retried")
    {
        Ok(_) => panic!("a malformed endpoint was accepted"),
        Err(e) => e,
    };
    assert!(
        matches!(err, ferry_client::ConnectError::BadEndpoint { .. }),
        "{err}"
    );
}
