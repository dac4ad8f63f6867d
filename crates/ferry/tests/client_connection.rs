//! What a client of one plain endpoint (`ferry_client::connect`, as every agent connects)
//! does when its server stops answering, restarts or is not there, against `ferry store` and
//! real etcd 3.4.

mod common;

use std::time::{Duration, Instant};

use common::Server;

against_both!(mut &[];
    a_call_to_a_server_that_stops_answering_fails_within_the_request_timeout,
    the_same_client_works_again_after_its_server_restarts,
    calls_made_together_on_one_connection_are_all_answered,
);

/// Many calls at once on one connection (agents behind one proxy), with a watch open on
/// it: the connection holds its writes back while several calls wait (so that they leave
/// together), and every call is still answered, each put at a revision of its own, and
/// the watch sees every one.
async fn calls_made_together_on_one_connection_are_all_answered(
    server: &mut Server,
) -> anyhow::Result<()> {
    const CALLS: usize = 300;
    let c = ferry_client::connect(&server.connect_config()).await?;
    let mut watcher = c.clone();
    let mut events = watcher
        .watch(
            "together/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await?;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(
                async move { c.put(format!("together/{i:03}"), i.to_string(), None).await },
            )
        })
        .collect();
    let mut revisions = std::collections::BTreeSet::new();
    for call in calls {
        let put = call.await??;
        revisions.insert(put.header().map_or(0, |h| h.revision()));
    }
    assert_eq!(revisions.len(), CALLS, "each put at a revision of its own");
    let mut seen = 0;
    while seen < CALLS {
        let message = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .map_err(|_| anyhow::anyhow!("the watch saw {seen} of {CALLS} puts"))??
            .ok_or_else(|| anyhow::anyhow!("the watch ended"))?;
        seen += message.events().len();
    }
    let all = c
        .clone()
        .get(
            "together/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    assert_eq!(all.kvs().len(), CALLS);
    Ok(())
}

/// Resumes a paused server when the test ends, whichever way it ends.
struct Resume<'a>(&'a Server);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

/// A frozen server keeps its connections open: a call must end after the request timeout
/// with an error, not wait for ever; once the server is back, the same client works.
async fn a_call_to_a_server_that_stops_answering_fails_within_the_request_timeout(
    server: &mut Server,
) -> anyhow::Result<()> {
    let mut config = server.connect_config();
    config.request_timeout = Duration::from_secs(1);
    let mut c = ferry_client::connect(&config).await?;
    c.put("frozen", "1", None).await?;
    server.pause()?;
    let resume = Resume(server);
    let started = Instant::now();
    let limit = Duration::from_secs(20);
    match tokio::time::timeout(limit, c.get("frozen", None)).await {
        Err(_) => anyhow::bail!("a get on a paused server was still waiting after {limit:?}"),
        Ok(Ok(resp)) => anyhow::bail!("a paused server answered: {resp:?}"),
        Ok(Err(e)) => {
            let text = e.to_string().to_lowercase();
            assert!(
                text.contains("timeout") || text.contains("timed out"),
                "a timed-out call says so: {e}"
            );
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "failed before its timeout: {:?}",
        started.elapsed()
    );
    drop(resume);
    let value = c.get("frozen", None).await?;
    assert_eq!(value.kvs().first().map(|kv| kv.value()), Some(&b"1"[..]));
    c.put("frozen", "2", None).await?;
    Ok(())
}

/// The connection a client holds dies with its server; the client connects again at its next
/// call (which may fail while the server is still starting) and finds everything written.
async fn the_same_client_works_again_after_its_server_restarts(
    server: &mut Server,
) -> anyhow::Result<()> {
    let mut c = ferry_client::connect(&server.connect_config()).await?;
    c.put("kept", "before", None).await?;
    let mut watch = c.watch("kept", None).await?;
    server.restart().await?;
    // The watch on the old connection ends: its owner knows to watch again.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match watch.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a watch on a restarted server stayed open");
    let deadline = Instant::now() + Duration::from_secs(20);
    let value = loop {
        match c.get("kept", None).await {
            Ok(resp) => break resp,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not back yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("the client did not reconnect after the restart: {e}"),
        }
    };
    assert_eq!(
        value.kvs().first().map(|kv| kv.value()),
        Some(&b"before"[..])
    );
    let mut watch = c.watch("kept", None).await?;
    c.put("kept", "after", None).await?;
    let resp = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
    let resp = if resp.created() && resp.events().is_empty() {
        tokio::time::timeout(Duration::from_secs(10), watch.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("watch ended"))?
    } else {
        resp
    };
    assert_eq!(
        resp.events()
            .first()
            .and_then(|e| e.kv())
            .map(|kv| kv.value()),
        Some(&b"after"[..])
    );
    Ok(())
}

/// An address nobody listens on is reported as unreachable, naming it, within the dial
/// timeout: nothing hangs and nothing claims a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_nobody_listens_on_is_reported_unreachable() -> anyhow::Result<()> {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let endpoint = format!("127.0.0.1:{port}");
    let started = Instant::now();
    match ferry_client::connect(&ferry_client::ConnectConfig::new([endpoint.as_str()])).await {
        Ok(_) => anyhow::bail!("connected to {endpoint}, where nothing listens"),
        Err(ferry_client::ConnectError::Unreachable { endpoints, reason }) => {
            assert!(endpoints.contains(&endpoint), "{endpoints}");
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
        }
        Err(other) => anyhow::bail!("not reported as unreachable: {other}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    Ok(())
}
