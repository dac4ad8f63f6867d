//! The store's scale targets: 10,000 watches fed by one writer, and 50,000 leases kept alive
//! by one client. These assert completeness (every event, no expiry), never speed.

mod common;

use std::time::{Duration, Instant};

use common::{start, Kind, Server};
use etcd_client::proto::{PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse};
use etcd_client::{Client, GetOptions, LeaseGrantOptions, PutOptions, WatchOptions};
use futures::StreamExt;

async fn every_event_reaches_10_000_watches(server: &Server) -> anyhow::Result<()> {
    // One stream per connection: with many busy streams on one connection the Rust HTTP/2
    // client's flood protection closes it when the server is etcd.
    const CONNECTIONS: usize = 100;
    const STREAMS_PER_CONNECTION: usize = 1;
    const WATCHES_PER_STREAM: usize = 100;
    const EVENTS: usize = 20;
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let client = server.client().await?;
        for _ in 0..STREAMS_PER_CONNECTION {
            let mut stream = client
                .watch_client()
                .watch("scale/", Some(WatchOptions::new().with_prefix()))
                .await?;
            for _ in 1..WATCHES_PER_STREAM {
                stream
                    .watch("scale/", Some(WatchOptions::new().with_prefix()))
                    .await?;
            }
            streams.push(stream);
        }
    }
    // Every watch confirms its creation before the writer starts.
    for stream in &mut streams {
        let mut created = 0;
        while created < WATCHES_PER_STREAM {
            let resp = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await??
                .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
            assert!(resp.created() && !resp.canceled());
            created += 1;
        }
    }
    let mut writer = server.client().await?;
    for i in 0..EVENTS {
        writer
            .put(format!("scale/{i}"), format!("{i}"), None)
            .await?;
    }
    let readers = streams.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut per_watch = std::collections::HashMap::<i64, Vec<i64>>::new();
            let mut total = 0;
            while total < WATCHES_PER_STREAM * EVENTS {
                let resp = tokio::time::timeout(Duration::from_secs(120), stream.message())
                    .await??
                    .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
                let revs = per_watch.entry(resp.watch_id()).or_default();
                for e in resp.events() {
                    revs.push(e.kv().map(|kv| kv.mod_revision()).unwrap_or(0));
                    total += 1;
                }
            }
            anyhow::Ok(per_watch)
        })
    });
    let expected: Vec<i64> = (2..2 + EVENTS as i64).collect();
    let mut watches = 0;
    for reader in futures::future::join_all(readers).await {
        for (id, revs) in reader?? {
            assert_eq!(revs, expected, "watch {id} missed or reordered events");
            watches += 1;
        }
    }
    assert_eq!(
        watches,
        CONNECTIONS * STREAMS_PER_CONNECTION * WATCHES_PER_STREAM
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_10_000_watches_on_ferry() -> anyhow::Result<()> {
    every_event_reaches_10_000_watches(&start(Kind::Ferry, &[]).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_10_000_watches_on_etcd() -> anyhow::Result<()> {
    every_event_reaches_10_000_watches(&start(Kind::Etcd, &[]).await?).await
}

/// One keep-alive stream for many leases, as a registry with many instances would use.
async fn keep_alive_stream(
    endpoint: &str,
) -> anyhow::Result<(
    tokio::sync::mpsc::Sender<PbLeaseKeepAliveRequest>,
    tonic::Streaming<PbLeaseKeepAliveResponse>,
)> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{endpoint}"))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Lease/LeaseKeepAlive");
    let codec =
        tonic_prost::ProstCodec::<PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse>::default();
    let responses = grpc
        .streaming(tonic::Request::new(tokio_stream_from(rx)), path, codec)
        .await?
        .into_inner();
    Ok((tx, responses))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_leases_kept_alive_by_one_client() -> anyhow::Result<()> {
    const LEASES: i64 = 50_000;
    const TTL: i64 = 5;
    let server = start(Kind::Ferry, &[]).await?;
    let client = server.client().await?;
    let (tx, mut responses) = keep_alive_stream(&server.endpoint()).await?;
    // Every response must carry the full TTL: 0 would mean the lease had expired.
    let checker = tokio::spawn(async move {
        let mut renewed = 0u64;
        while let Some(resp) = responses.next().await {
            let resp = resp?;
            anyhow::ensure!(resp.ttl == TTL, "lease {} expired or was unknown", resp.id);
            renewed += 1;
        }
        anyhow::Ok(renewed)
    });
    // Renew every granted lease every ~2 s (the registry default) from the first grant on.
    let granted = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let renewer = {
        let granted = granted.clone();
        tokio::spawn(async move {
            let mut rounds = 0;
            let mut done_at: Option<Instant> = None;
            loop {
                let round_started = Instant::now();
                let upto = granted.load(std::sync::atomic::Ordering::Acquire);
                for id in 1..=upto {
                    tx.send(PbLeaseKeepAliveRequest { id }).await?;
                }
                if upto == LEASES {
                    rounds += 1;
                    let end = *done_at.get_or_insert_with(|| {
                        Instant::now() + Duration::from_secs(3 * TTL as u64)
                    });
                    if Instant::now() >= end {
                        return anyhow::Ok(rounds);
                    }
                }
                tokio::time::sleep(Duration::from_secs(2).saturating_sub(round_started.elapsed()))
                    .await;
            }
        })
    };
    // Grant with chosen ids and attach one key each, in ordered chunks of concurrent requests.
    for chunk_start in (1..=LEASES).step_by(1000) {
        let chunk_end = (chunk_start + 999).min(LEASES);
        let grants = futures::stream::iter(chunk_start..=chunk_end)
            .map(|id| {
                let mut c: Client = client.clone();
                async move {
                    c.lease_grant(TTL, Some(LeaseGrantOptions::new().with_id(id)))
                        .await?;
                    c.put(
                        format!("inst/{id}"),
                        "up",
                        Some(PutOptions::new().with_lease(id)),
                    )
                    .await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>()
            .await;
        for g in grants {
            g?;
        }
        granted.store(chunk_end, std::sync::atomic::Ordering::Release);
    }
    let rounds = renewer.await??;
    let renewed = checker.await??;
    assert!(
        renewed >= 3 * LEASES as u64,
        "only {renewed} renewals were answered"
    );
    assert!(rounds >= 3, "only {rounds} keep-alive rounds ran");
    let mut c = server.client().await?;
    assert_eq!(c.leases().await?.leases().len(), LEASES as usize);
    let keys = c
        .get(
            "inst/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    assert_eq!(
        keys.count(),
        LEASES,
        "no key vanished with an expired lease"
    );
    Ok(())
}
