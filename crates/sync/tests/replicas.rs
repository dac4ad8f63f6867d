//! Three replicas on loopback, each serving the real gRPC service: writes on any replica
//! reach all, concurrent writes to one key converge, deletes are not undone by older
//! writes, a client speaking only the original protocol works, bad input changes nothing.

use std::time::{Duration, Instant};

use ferry_sync::proto::sync_client::SyncClient;
use ferry_sync::proto::{SyncData, SyncRequest};
use ferry_sync::{Replica, SyncService};

async fn serve(replica: Replica) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(SyncService::new(replica).serve(listener));
    Ok(addr)
}

async fn cluster(n: usize) -> anyhow::Result<(Vec<Replica>, Vec<String>)> {
    let replicas: Vec<Replica> = (0..n).map(|_| Replica::new()).collect();
    let mut addrs = Vec::new();
    for r in &replicas {
        addrs.push(serve(r.clone()).await?);
    }
    for (i, r) in replicas.iter().enumerate() {
        let others: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, a)| a.clone())
            .collect();
        r.set_peers(&others);
    }
    Ok((replicas, addrs))
}

async fn eventually(what: &str, check: impl Fn() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    while !check() {
        anyhow::ensure!(Instant::now() < until, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_any_replica_reaches_all_and_concurrent_writes_converge() -> anyhow::Result<()> {
    let (replicas, _) = cluster(3).await?;
    for (i, r) in replicas.iter().enumerate() {
        r.set(1, &format!("k{i}"), &format!("from-{i}"));
    }
    eventually("every write on every replica", || {
        replicas.iter().all(|r| r.values(1).len() == 3)
    })
    .await?;
    // The same key written on two replicas at once: all end with the same value, the one
    // with the higher version.
    let a = replicas[1].set(1, "race", "one");
    let b = replicas[2].set(1, "race", "two");
    let winner = if a > b { "one" } else { "two" };
    eventually("the race converged", || {
        replicas
            .iter()
            .all(|r| r.get(1, "race").as_deref() == Some(winner))
    })
    .await?;
    // A delete everywhere, and an older write arriving late does not bring the key back.
    let old = replicas[0].entry(1, "k0").map(|e| e.version);
    replicas[2].delete(1, "k0");
    eventually("the delete everywhere", || {
        replicas.iter().all(|r| r.get(1, "k0").is_none())
    })
    .await?;
    if let Some(old) = old {
        assert!(!replicas[1].merge(1, "k0", Some("zombie".into()), old));
    }
    assert_eq!(replicas[1].get(1, "k0"), None);
    let maps: Vec<_> = replicas.iter().map(|r| r.entries(1)).collect();
    assert!(maps.windows(2).all(|w| w[0] == w[1]), "{maps:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_the_original_protocol_works_unchanged() -> anyhow::Result<()> {
    let (replicas, addrs) = cluster(3).await?;
    let mut client = SyncClient::connect(format!("http://{}", addrs[0])).await?;
    // Set with only type and data, as the original clients send it.
    let write = SyncData {
        r#type: 7,
        data: [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), "2".to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    client
        .set(SyncRequest {
            data: vec![write],
            ..Default::default()
        })
        .await?;
    eventually("the client's write on every replica", || {
        replicas.iter().all(|r| r.values(7).len() == 2)
    })
    .await?;
    replicas[1].set(8, "other", "x");
    let asked = SyncData {
        r#type: 7,
        data: [
            ("a".to_string(), String::new()),
            ("zzz".to_string(), String::new()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let got = client
        .get(SyncRequest {
            data: vec![asked],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(got.data.len(), 1);
    assert_eq!(got.data[0].data.get("a").map(String::as_str), Some("1"));
    assert!(!got.data[0].data.contains_key("zzz"));
    eventually("type 8 on replica 0", || {
        replicas[0].get(8, "other").is_some()
    })
    .await?;
    let all = client
        .get_all(SyncRequest {
            data: vec![],
            ..Default::default()
        })
        .await?
        .into_inner();
    let types: Vec<i32> = all.data.iter().map(|d| d.r#type).collect();
    assert_eq!(types, [7, 8]);
    // A bad version refuses the whole request and changes nothing.
    let bad = SyncData {
        r#type: 7,
        data: [("a".to_string(), "changed".to_string())]
            .into_iter()
            .collect(),
        versions: [("a".to_string(), "yesterday".to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let err = client
        .set(SyncRequest {
            data: vec![bad],
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("not <time>/<replica>"),
        "{}",
        err.message()
    );
    assert_eq!(replicas[0].get(7, "a").as_deref(), Some("1"));
    Ok(())
}
