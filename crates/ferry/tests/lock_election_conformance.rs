//! etcd's Lock and Election services through the `etcd-client` crate's own `lock()` and
//! `campaign()`…, against `ferry store` and real etcd 3.4: the same assertions on both.

mod common;

use std::time::Duration;

use common::{assert_etcd_error, Server};
use etcd_client::{Client, GetOptions, LeaderKey, LockOptions, ProclaimOptions, ResignOptions};
use tonic::Code;

against_both!(&[];
    a_lock_is_exclusive_and_handed_to_the_next_waiter_on_unlock,
    a_lock_whose_lease_expires_goes_to_the_next_waiter,
    a_waiter_that_gives_up_leaves_the_queue,
    a_lock_on_a_missing_lease_is_refused,
    a_lock_past_its_deadline_is_answered_as_etcd_does_and_withdrawn,
    campaign_proclaim_observe_and_resign,
    campaigning_without_a_lease_gets_one,
);

const WAIT: Duration = Duration::from_secs(10);

async fn lease(c: &mut Client, ttl: i64) -> anyhow::Result<i64> {
    Ok(c.lease_grant(ttl, None).await?.id())
}

fn revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map_or(0, |h| h.revision())
}

async fn a_lock_is_exclusive_and_handed_to_the_next_waiter_on_unlock(
    server: &Server,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let first_lease = lease(&mut c, 60).await?;
    let second_lease = lease(&mut c, 60).await?;
    let first = c
        .lock("jobs", Some(LockOptions::new().with_lease(first_lease)))
        .await?;
    assert_eq!(first.key(), format!("jobs/{first_lease:x}").as_bytes());
    let held = c.get(first.key(), None).await?;
    assert_eq!(held.kvs()[0].lease(), first_lease);
    let mut waiter_client = c.clone();
    let waiter = tokio::spawn(async move {
        waiter_client
            .lock("jobs", Some(LockOptions::new().with_lease(second_lease)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "two holders of one lock");
    // Both are queued under the lock's prefix.
    let queued = c
        .get("jobs/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(queued.kvs().len(), 2);
    let unlocked = c.unlock(first.key()).await?;
    let second = tokio::time::timeout(WAIT, waiter).await???;
    assert_eq!(second.key(), format!("jobs/{second_lease:x}").as_bytes());
    assert!(revision(second.header()) >= revision(unlocked.header()));
    assert!(revision(second.header()) > revision(first.header()));
    // Locking again with the lease that holds it returns the same key at once.
    let again = tokio::time::timeout(
        WAIT,
        c.lock("jobs", Some(LockOptions::new().with_lease(second_lease))),
    )
    .await??;
    assert_eq!(again.key(), second.key());
    c.unlock(second.key()).await?;
    assert_eq!(
        c.get(
            "jobs/",
            Some(GetOptions::new().with_prefix().with_count_only())
        )
        .await?
        .count(),
        0
    );
    Ok(())
}

async fn a_lock_whose_lease_expires_goes_to_the_next_waiter(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    // Nobody keeps this lease alive: its holder is gone once it expires.
    let short = lease(&mut c, 2).await?;
    let next = lease(&mut c, 60).await?;
    c.lock("leader", Some(LockOptions::new().with_lease(short)))
        .await?;
    let got = tokio::time::timeout(
        WAIT,
        c.lock("leader", Some(LockOptions::new().with_lease(next))),
    )
    .await??;
    assert_eq!(got.key(), format!("leader/{next:x}").as_bytes());
    let keys = c
        .get("leader/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(keys.kvs().len(), 1, "the expired holder's key is gone");
    Ok(())
}

async fn a_waiter_that_gives_up_leaves_the_queue(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let holder = lease(&mut c, 60).await?;
    let quitter = lease(&mut c, 60).await?;
    c.lock("q", Some(LockOptions::new().with_lease(holder)))
        .await?;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        c.lock("q", Some(LockOptions::new().with_lease(quitter))),
    )
    .await;
    assert!(gave_up.is_err(), "the lock was not held");
    // The server withdraws the abandoned waiter's key.
    wait_gone(
        &mut c,
        &format!("q/{quitter:x}"),
        "the abandoned waiter's key stayed",
    )
    .await
}

/// Waits (up to `WAIT`) until `key` is gone; fails with `stayed` otherwise.
async fn wait_gone(c: &mut Client, key: &str, stayed: &str) -> anyhow::Result<()> {
    let until = tokio::time::Instant::now() + WAIT;
    while c.get(key, None).await?.count() > 0 {
        anyhow::ensure!(tokio::time::Instant::now() < until, "{stayed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn a_lock_on_a_missing_lease_is_refused(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    assert_etcd_error(
        c.lock("nolease", Some(LockOptions::new().with_lease(0x1234_5678)))
            .await,
        Code::Unknown,
        "etcdserver: requested lease not found",
    );
    assert_eq!(
        c.get("nolease/", Some(GetOptions::new().with_prefix()))
            .await?
            .count(),
        0
    );
    Ok(())
}

async fn campaign_proclaim_observe_and_resign(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    assert_etcd_error(c.leader("web").await, Code::Unknown, "election: no leader");
    let first_lease = lease(&mut c, 60).await?;
    let second_lease = lease(&mut c, 60).await?;
    let mut won = c.campaign("web", "10.0.0.1", first_lease).await?;
    let leader = won
        .take_leader()
        .ok_or_else(|| anyhow::anyhow!("no leader key"))?;
    assert_eq!(leader.key(), format!("web/{first_lease:x}").as_bytes());
    assert_eq!(leader.name(), b"web");
    assert_eq!(leader.lease(), first_lease);
    // (etcd sends a stream's headers with its first message: observe once there is a leader.)
    let mut observed = c.observe("web").await?;
    let now = c.leader("web").await?;
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"10.0.0.1"[..]));
    // A second candidate waits behind the leader.
    let mut candidate_client = c.clone();
    let candidate = tokio::spawn(async move {
        candidate_client
            .campaign("web", "10.0.0.2", second_lease)
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!candidate.is_finished(), "two leaders");
    c.proclaim(
        "10.0.0.9",
        Some(ProclaimOptions::new().with_leader(leader.clone())),
    )
    .await?;
    assert_eq!(
        c.leader("web").await?.kv().map(|kv| kv.value().to_vec()),
        Some(b"10.0.0.9".to_vec())
    );
    let stale = LeaderKey::new()
        .with_name("web")
        .with_key(leader.key())
        .with_rev(leader.rev() + 1000)
        .with_lease(leader.lease());
    assert_etcd_error(
        c.proclaim("x", Some(ProclaimOptions::new().with_leader(stale)))
            .await,
        Code::Unknown,
        "election: not leader",
    );
    assert_etcd_error(
        c.resign(None).await,
        Code::Unknown,
        "\"leader\" field must be provided",
    );
    c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await?;
    let mut next = tokio::time::timeout(WAIT, candidate).await???;
    let next_leader = next
        .take_leader()
        .ok_or_else(|| anyhow::anyhow!("no leader key"))?;
    assert_eq!(next_leader.lease(), second_lease);
    // Resigning again is not an error.
    c.resign(Some(ResignOptions::new().with_leader(leader)))
        .await?;
    // Observe saw each leader and each value, in order.
    let mut values = Vec::new();
    while values.len() < 3 {
        let response = tokio::time::timeout(WAIT, observed.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("observe ended after {values:?}"))?;
        if let Some(kv) = response.kv() {
            values.push(String::from_utf8_lossy(kv.value()).into_owned());
        }
    }
    assert_eq!(values, ["10.0.0.1", "10.0.0.9", "10.0.0.2"]);
    Ok(())
}

async fn campaigning_without_a_lease_gets_one(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let mut won = c.campaign("solo", "v", 0).await?;
    let leader = won
        .take_leader()
        .ok_or_else(|| anyhow::anyhow!("no leader key"))?;
    assert_ne!(leader.lease(), 0, "a lease is granted for the campaign");
    assert_eq!(
        leader.key(),
        format!("solo/{:x}", leader.lease()).as_bytes()
    );
    let ttl = c.lease_time_to_live(leader.lease(), None).await?;
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 60, "ttl {}", ttl.ttl());
    Ok(())
}

/// A gRPC call's `grpc-timeout` is kept by the server, as etcd's Go server keeps the
/// client's deadline: a lock still waiting when it passes is answered as etcd 3.4 answers it
/// (UNKNOWN, "context deadline exceeded": etcd returns the context's error unmapped, and its
/// gRPC server sends such an error as UNKNOWN) and its waiter withdrawn. Sent over a bare HTTP/2 connection, so that no client library
/// enforces the deadline itself.
async fn a_lock_past_its_deadline_is_answered_as_etcd_does_and_withdrawn(
    server: &Server,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let holder = lease(&mut c, 60).await?;
    let waiter = lease(&mut c, 60).await?;
    c.lock("d", Some(LockOptions::new().with_lease(holder)))
        .await?;
    // LockRequest { name: "d", lease: waiter } in a gRPC frame.
    let mut message = vec![0x0a, 1, b'd', 0x10];
    let mut v = waiter as u64;
    while v >= 0x80 {
        message.push((v as u8) | 0x80);
        v >>= 7;
    }
    message.push(v as u8);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let address = server.endpoint().trim_start_matches("http://").to_string();
    let tcp = tokio::net::TcpStream::connect(&address).await?;
    let (send, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(connection);
    let mut send = send.ready().await?;
    let request = http::Request::post(format!("http://{address}/v3lockpb.Lock/Lock"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(())?;
    let (response, mut body) = send.send_request(request, false)?;
    body.send_data(bytes::Bytes::from(frame), true)?;
    let response = tokio::time::timeout(WAIT, response)
        .await
        .map_err(|_| anyhow::anyhow!("no answer long after the deadline"))??;
    let (head, mut stream) = response.into_parts();
    let mut ending = head.headers.clone();
    if !ending.contains_key("grpc-status") {
        while let Some(data) = stream.data().await {
            data?;
        }
        ending = stream.trailers().await?.unwrap_or_default();
    }
    let field = |name: &str| {
        ending
            .get(name)
            .map(|v| common::percent_decoded(v.as_bytes()))
    };
    assert_eq!(
        (field("grpc-status"), field("grpc-message")),
        (
            Some("2".to_string()),
            Some("context deadline exceeded".to_string())
        ),
        "{head:?} {ending:?}"
    );
    driver.abort();
    // The waiter withdrew its key.
    wait_gone(
        &mut c,
        &format!("d/{waiter:x}"),
        "the waiter past its deadline kept its key",
    )
    .await
}
