//! kill -9 of a controller, an agent and the store at awkward moments: everything converges
//! and no acknowledged change is lost. Against `ferry store` and a real etcd 3.4, on SQLite.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::ingress::{
    agents, call, config_path, create, document, sqlite_url, wait_complete, wait_rollout,
    Controller,
};
use common::Server;
use ferry_controller::{IngressDocument, Record};

against_both!(mut &[];
    controller_killed_mid_burst_loses_nothing_and_the_other_replica_takes_over,
    agent_killed_mid_rollout_catches_up_after_restart,
    store_killed_mid_burst_loses_nothing_acknowledged,
);

/// Creates configurations through `addr` until `stop` is set or a request fails; the ids
/// the API acknowledged (201).
fn writer(
    addr: String,
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut failures = 0;
        while !stop.load(Ordering::Relaxed) {
            match create(&addr, &format!("{tag}{}.example.com", acked.len())).await {
                Ok(id) => {
                    acked.push(id);
                    // A steady stream rather than a flood: the point is when the kill lands.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                // Unacknowledged: the request may or may not have committed; either is fine.
                Err(_) => {
                    failures += 1;
                    if failures > 200 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        acked
    })
}

async fn controller_killed_mid_burst_loses_nothing_and_the_other_replica_takes_over(
    server: &mut Server,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let endpoint = server.endpoint();
    let url = sqlite_url(tmp.path());
    // c1 starts first, so it leads the reconciliation.
    let mut c1 = Controller::start(&endpoint, &url, "c1", tmp.path()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c2 = Controller::start(&endpoint, &url, "c2", tmp.path()).await?;
    let _agents = agents(&endpoint, tmp.path(), 2)?;
    let stop = Arc::new(AtomicBool::new(false));
    let burst = writer(c1.addr.clone(), "burst", stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    c1.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked = burst.await?;
    assert!(
        !acked.is_empty(),
        "the burst acknowledged nothing before the kill"
    );

    // The crash window between the SQL commit and the publish, made certain: a version only
    // SQL holds. Only the surviving replica can publish it, once it leads.
    let record = Record::connect(&url).await?;
    let unpublished = record
        .create(
            "prod",
            &IngressDocument::from_json(document("window.example.com").as_bytes())?,
            "alice",
        )
        .await?;
    for id in acked.iter().chain([&unpublished.id]) {
        wait_complete(&c2.addr, id, 1, 2).await?;
    }
    // The killed replica comes back on the same database and serves the same record.
    c1.restart().await?;
    let (_, list) = call(
        &c1.addr,
        "GET",
        "/api/v1/environments/prod/configs",
        None,
        "",
    )
    .await?;
    let listed: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().filter_map(|c| c["id"].as_str()).collect())
        .unwrap_or_default();
    for id in acked.iter().chain([&unpublished.id]) {
        assert!(listed.contains(&id.as_str()), "{id} lost");
    }
    Ok(())
}

async fn agent_killed_mid_rollout_catches_up_after_restart(
    server: &mut Server,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let endpoint = server.endpoint();
    let url = sqlite_url(tmp.path());
    let c1 = Controller::start(&endpoint, &url, "c1", tmp.path()).await?;
    let mut agents = agents(&endpoint, tmp.path(), 3)?;
    let id = create(&c1.addr, "v1.example.com").await?;
    wait_complete(&c1.addr, &id, 1, 3).await?;
    // Updates in quick succession; a2 dies in the middle of them.
    for version in 1..=6 {
        if version == 3 {
            agents[1].kill9();
        }
        let (status, body) = call(
            &c1.addr,
            "PUT",
            &config_path(&id),
            Some(version),
            &document(&format!("v{}.example.com", version + 1)),
        )
        .await?;
        assert_eq!(status, 200, "{body}");
    }
    // While a2 is down but still registered, the rollout is not complete.
    let partial = wait_rollout(&c1.addr, &id, Duration::from_secs(20), |r| {
        r.version == 7 && r.summary.applied == 2
    })
    .await?;
    assert!(!partial.summary.complete, "{partial:?}");
    agents[1].restart()?;
    wait_complete(&c1.addr, &id, 7, 3).await?;
    for a in &agents {
        assert!(
            a.nginx_conf().contains("server_name \"v7.example.com\";"),
            "{}",
            a.name
        );
    }
    Ok(())
}

async fn store_killed_mid_burst_loses_nothing_acknowledged(
    server: &mut Server,
) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let endpoint = server.endpoint();
    let url = sqlite_url(tmp.path());
    let c1 = Controller::start(&endpoint, &url, "c1", tmp.path()).await?;
    let agents = agents(&endpoint, tmp.path(), 2)?;
    let stop = Arc::new(AtomicBool::new(false));
    let burst = writer(c1.addr.clone(), "burst", stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = burst.await?;
    assert!(!acked.is_empty());
    for id in &acked {
        wait_complete(&c1.addr, id, 1, 2).await?;
    }
    let last = acked.len() - 1;
    for a in &agents {
        assert!(
            a.nginx_conf()
                .contains(&format!("server_name \"burst{last}.example.com\";")),
            "{}",
            a.name
        );
    }
    Ok(())
}
