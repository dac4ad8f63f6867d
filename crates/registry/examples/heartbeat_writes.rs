//! Measures the store writes per second that heartbeats of many instances cause: ferry's
//! scheme (one lease per instance, kept alive) against the original design's scheme (grant a
//! new lease and re-put the key every 2 s).
//!
//! ```text
//! cargo run --release -p ferry-registry --example heartbeat_writes -- 127.0.0.1:2379 1000 10
//! ```
//! Arguments: endpoint, instances, seconds measured. Prints one JSON line per scheme.

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};
use ferry_registry::{announce, AnnounceConfig, Instance};

async fn revision(client: &mut Client) -> anyhow::Result<i64> {
    Ok(client
        .get("x", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or(0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:2379".into());
    let instances: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let seconds: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let window = Duration::from_secs(seconds);
    let mut client = Client::connect([endpoint.as_str()], None).await?;

    // ferry: one lease per instance, kept alive every 2 s.
    let mut running = Vec::new();
    for i in 0..instances {
        let instance = Instance::new("bench-lease", format!("{i}"), "127.0.0.1:1");
        running.push(announce(client.clone(), AnnounceConfig::default(), instance).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = revision(&mut client).await?;
    tokio::time::sleep(window).await;
    let writes = revision(&mut client).await? - start;
    println!(
        "{{\"scheme\":\"keep-alive\",\"instances\":{instances},\"seconds\":{seconds},\"writes\":{writes},\"writes_per_second\":{:.1}}}",
        writes as f64 / seconds as f64
    );
    for a in running {
        a.stop().await?;
    }

    // The original design: every 2 s each instance grants a new lease and re-puts its key.
    let start = revision(&mut client).await?;
    let began = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..instances {
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("/services/bench-regrant/{i}");
            let value = serde_json::to_vec(&Instance::new(
                "bench-regrant",
                format!("{i}"),
                "127.0.0.1:1",
            ))?;
            while began.elapsed() < window {
                let lease = c.lease_grant(5, None).await?.id();
                c.put(
                    key.as_str(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await?;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = began.elapsed().as_secs_f64();
    let writes = revision(&mut client).await? - start;
    println!(
        "{{\"scheme\":\"grant-and-put\",\"instances\":{instances},\"seconds\":{elapsed:.1},\"writes\":{writes},\"writes_per_second\":{:.1}}}",
        writes as f64 / elapsed
    );
    Ok(())
}
