//! The store on a runtime of its own (`ferry up`): it keeps serving while every thread of
//! the caller's runtime is busy, and stops and reopens cleanly from async code.

use std::time::{Duration, Instant};

use ferry_store::{RunningStore, StoreConfig};

async fn start(dir: &std::path::Path) -> anyhow::Result<RunningStore> {
    let mut config = StoreConfig::new(dir.join("data"));
    config.listen_client_urls = vec!["http://127.0.0.1:0".into()];
    Ok(ferry_store::start_on_own_runtime(config).await?)
}

/// Puts `key` from a thread with its own runtime, as another process would.
fn put_from_another_thread(
    endpoint: String,
    key: &'static str,
) -> std::thread::JoinHandle<anyhow::Result<Duration>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let started = Instant::now();
            let mut client = etcd_client::Client::connect([endpoint], None).await?;
            tokio::time::timeout(Duration::from_secs(5), client.put(key, "v", None)).await??;
            Ok(started.elapsed())
        })
    })
}

#[tokio::test(flavor = "current_thread")]
async fn it_serves_while_the_callers_only_thread_is_blocked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = start(dir.path()).await?;
    let writer = put_from_another_thread(running.local_addrs[0].to_string(), "during");
    // The caller's runtime has one thread, and it is not polling anything now.
    std::thread::sleep(Duration::from_secs(3));
    let took = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))??;
    anyhow::ensure!(
        took < Duration::from_secs(3),
        "the put waited for the caller's thread ({took:?}): the store is not on threads of its own"
    );
    running.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_stops_from_async_code_and_reopens_with_what_it_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = start(dir.path()).await?;
    let mut client =
        etcd_client::Client::connect([running.local_addrs[0].to_string()], None).await?;
    let rev = client
        .put("kept", "1", None)
        .await?
        .header()
        .map(|h| h.revision());
    running.shutdown().await?;
    // Dropped without a shutdown too: neither may block or panic in async code, and the
    // directory is released once its threads have stopped.
    let dropped = start(dir.path()).await?;
    drop(dropped);
    let deadline = Instant::now() + Duration::from_secs(5);
    let reopened = loop {
        match start(dir.path()).await {
            Ok(running) => break running,
            Err(e) if Instant::now() < deadline && e.to_string().contains("already in use") => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => return Err(e),
        }
    };
    let mut client =
        etcd_client::Client::connect([reopened.local_addrs[0].to_string()], None).await?;
    let got = client.get("kept", None).await?;
    let kv = got
        .kvs()
        .first()
        .ok_or_else(|| anyhow::anyhow!("the key is gone"))?;
    assert_eq!(kv.value(), b"1");
    assert_eq!(Some(kv.mod_revision()), rev);
    reopened.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_is_an_error_naming_why_and_leaves_the_running_store_alone(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let running = start(dir.path()).await?;
    let second = start(dir.path()).await;
    let err = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("already in use"), "{err:?}");
    let mut client =
        etcd_client::Client::connect([running.local_addrs[0].to_string()], None).await?;
    client.put("still", "served", None).await?;
    running.shutdown().await?;
    Ok(())
}
