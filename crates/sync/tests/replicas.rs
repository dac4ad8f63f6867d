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
    let addrs = ferry_sync::serve_local_cluster(&replicas).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_round_repairs_both_sides_and_a_snapshot_copies_everything() -> anyhow::Result<()>
{
    use ferry_sync::anti_entropy::{round, snapshot_from};
    use ferry_sync::proto::DigestRequest;
    use ferry_sync::ReplicaConfig;

    // Two replicas that never heard of each other: every write missed the other.
    let a = Replica::new();
    let b = Replica::new();
    let a_addr = serve(a.clone()).await?;
    let b_addr = serve(b.clone()).await?;
    for i in 0..3000 {
        a.set(1, &format!("k{i}"), "from-a");
    }
    a.delete(1, "k5");
    b.set(1, "k7", "newer-on-b");
    b.set(2, "only-b", "x");
    b.delete(2, "deleted-on-b");
    assert_ne!(a.digests(), b.digests());
    let outcome = round(&a, &b_addr).await?;
    assert!(outcome.repaired_here >= 3, "{outcome:?}");
    assert!(outcome.pushed >= 2999, "{outcome:?}");
    assert_eq!(a.digests(), b.digests());
    for ty in [1, 2] {
        assert_eq!(a.entries(ty), b.entries(ty));
    }
    assert_eq!(b.get(1, "k7").as_deref(), Some("newer-on-b"));
    assert_eq!(b.get(1, "k5"), None);
    assert!(b.entry(1, "k5").is_some(), "the tombstone travelled");
    // In step now: the next round compares digests only.
    assert_eq!(round(&b, &a_addr).await?.buckets_differing, 0);
    // Writes b made that a missed (no fan-out between them): a's next round with b asks
    // only for what changed at b since their last round, and the buckets then agree.
    for i in 0..500 {
        b.set(3, &format!("missed{i}"), "x");
    }
    let outcome = round(&a, &b_addr).await?;
    assert_eq!(outcome.repaired_here, 500, "{outcome:?}");
    assert_eq!(
        outcome.buckets_differing, 0,
        "the delta was enough: {outcome:?}"
    );
    assert_eq!(a.digests(), b.digests());

    // A joining replica copies everything, tombstones included, by the streamed snapshot;
    // until it is ready it serves neither reads nor peers.
    let joining = Replica::with_config(ReplicaConfig {
        ready: false,
        ..ReplicaConfig::default()
    });
    let joining_addr = serve(joining.clone()).await?;
    let mut client = SyncClient::connect(format!("http://{joining_addr}")).await?;
    let refused = client
        .get_all(SyncRequest::default())
        .await
        .expect_err("not ready");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let refused = client
        .digest(DigestRequest {})
        .await
        .expect_err("not ready");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(snapshot_from(&a, &joining_addr).await.is_err());
    let copied = snapshot_from(&joining, &a_addr).await?;
    assert_eq!(
        copied,
        3000 + 2 + 500,
        "type 1: 3000 keys (one a tombstone); type 2: two; type 3: 500"
    );
    assert_eq!(joining.digests(), a.digests());
    joining.set_ready(true);
    assert_eq!(
        client
            .get_all(SyncRequest::default())
            .await?
            .into_inner()
            .data
            .len(),
        3
    );

    // A replica out of touch for longer than the grace refuses to be copied from.
    let stale = Replica::with_config(ReplicaConfig {
        tombstone_grace: Duration::from_millis(200),
        ready: true,
    });
    let stale_addr = serve(stale.clone()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stale.is_stale());
    let mut client = SyncClient::connect(format!("http://{stale_addr}")).await?;
    let refused = client.digest(DigestRequest {}).await.expect_err("stale");
    assert!(
        refused.message().contains("out of touch"),
        "{}",
        refused.message()
    );
    Ok(())
}
