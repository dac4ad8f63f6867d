//! `lease-keepalive`: each client grants one lease and measures keep-alive round trips on
//! its keep-alive stream. `lease-grant`: grants leases and leaves them to expire.

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::time::Instant;

use crate::driver::{connect, drive, progress};
use crate::pacer::Pacer;
use crate::stats::{Latencies, Section};
use crate::{BenchConfig, BenchError};

pub(crate) async fn grant(config: &BenchConfig, ttl: i64) -> Result<Vec<Section>, BenchError> {
    let conns = connect(config).await?;
    let (lat, elapsed) = drive(config, &conns, "lease-grant", move |mut c, _| async move {
        c.lease_grant(ttl, None).await.map(|_| ())
    })
    .await;
    Ok(vec![lat.summary("grant", elapsed)])
}

pub(crate) async fn keepalive(config: &BenchConfig) -> Result<Vec<Section>, BenchError> {
    let conns = connect(config).await?;
    let mut leases: Vec<(i64, LeaseKeeper, LeaseKeepAliveStream)> = Vec::new();
    for c in 0..config.clients {
        let mut client = conns[c % conns.len()].clone();
        let setup = |source| BenchError::Setup {
            what: "granting a lease".into(),
            source,
        };
        let id = client.lease_grant(60, None).await.map_err(setup)?.id();
        let (keeper, stream) = client.lease_keep_alive(id).await.map_err(setup)?;
        leases.push((id, keeper, stream));
    }
    let pacer = std::sync::Arc::new(Pacer::new(config.limit, config.rate));
    let bar = progress(config, "lease-keepalive");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (id, mut keeper, mut stream) in leases {
        let (pacer, bar) = (pacer.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::new();
            while pacer.next().await.is_some() {
                let t = Instant::now();
                let answered = match keeper.keep_alive().await {
                    Ok(()) => stream.message().await,
                    Err(e) => Err(e),
                };
                match answered {
                    Ok(Some(r)) if r.ttl() > 0 => lat.record(t.elapsed()),
                    Ok(Some(_)) => lat.fail(format!("lease {id:x} expired")),
                    Ok(None) => {
                        lat.fail("keep-alive stream ended");
                        break;
                    }
                    Err(e) => lat.fail(e),
                }
                bar.inc(1);
            }
            (id, lat)
        }));
    }
    let mut all = Latencies::new();
    let mut ids = Vec::new();
    for t in tasks {
        match t.await {
            Ok((id, lat)) => {
                all.merge(&lat);
                ids.push(id);
            }
            Err(e) => all.fail(format!("client task failed: {e}")),
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(c) = conns.first() {
        for id in ids {
            let _ = c.clone().lease_revoke(id).await;
        }
    }
    Ok(vec![all.summary("keep-alive", elapsed)])
}
