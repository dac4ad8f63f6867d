//! A watch stream that falls behind the change feed: the store is started in-process with a
//! feed of two batches, so any reader that pauses must catch up from history.

use std::time::Duration;

use etcd_client::{Client, WatchOptions, WatchStream};
use ferry_store::{RunningStore, StoreConfig};

async fn start(dir: &std::path::Path) -> anyhow::Result<RunningStore> {
    let mut config = StoreConfig::new(dir.join("data"));
    config.listen_client_urls = vec!["http://127.0.0.1:0".into()];
    config.watch_feed_capacity = 2;
    Ok(ferry_store::start(config).await?)
}

/// A client on its own connection: an unread watch stream holds up its whole HTTP/2
/// connection, so the slow watcher must not share one with the writers.
async fn connect(running: &RunningStore) -> anyhow::Result<Client> {
    Ok(Client::connect([running.local_addrs[0].to_string()], None).await?)
}

async fn next_revisions(stream: &mut WatchStream) -> anyhow::Result<(Vec<i64>, Option<i64>)> {
    let resp = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("watch stream ended"))?;
    let revs = resp
        .events()
        .iter()
        .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
        .collect();
    Ok((revs, resp.canceled().then_some(resp.compact_revision())))
}

async fn write(running: &RunningStore, n: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut c = connect(running).await?;
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 4 {
                c.put(format!("k/{w}/{i}"), vec![b'v'; 4096], None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_stream_catches_up_from_history_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = start(dir.path()).await?;
    let mut slow = connect(&running)
        .await?
        .watch_client()
        .watch("k/", Some(WatchOptions::new().with_prefix()))
        .await?;
    next_revisions(&mut slow).await?;
    write(&running, 2000).await?;
    let mut revs = Vec::new();
    while revs.len() < 2000 {
        let (got, cancelled) = next_revisions(&mut slow).await?;
        assert_eq!(
            cancelled, None,
            "nothing was compacted, so nothing may be cancelled"
        );
        revs.extend(got);
    }
    assert_eq!(revs, (2..2002).collect::<Vec<i64>>());
    running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_falls_behind_compaction_is_cancelled_with_the_revision() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let running = start(dir.path()).await?;
    let mut slow = connect(&running)
        .await?
        .watch_client()
        .watch("k/", Some(WatchOptions::new().with_prefix()))
        .await?;
    next_revisions(&mut slow).await?;
    write(&running, 4000).await?;
    connect(&running).await?.compact(4001, None).await?;
    let mut revs = Vec::new();
    let compacted = loop {
        let (got, cancelled) = next_revisions(&mut slow).await?;
        revs.extend(got);
        if let Some(rev) = cancelled {
            break rev;
        }
        assert!(
            revs.len() < 4000,
            "the stream got every event although it fell behind compaction"
        );
    };
    assert_eq!(compacted, 4001);
    // What did arrive before the cancellation is in order without gaps.
    assert_eq!(revs, (2..2 + revs.len() as i64).collect::<Vec<i64>>());
    running.shutdown().await?;
    Ok(())
}
