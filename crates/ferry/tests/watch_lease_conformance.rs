//! Watch and Lease: etcd's semantics and guarantees, against `ferry store` and real etcd 3.4.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{assert_etcd_error, Server};
use etcd_client::{
    Client, EventType, GetOptions, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, Txn,
    TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use tonic::Code;

against_both!(&["--experimental-watch-progress-notify-interval", "1s"];
    watch_replays_history_then_follows_live_changes,
    watch_filters_prefixes_and_prev_kv,
    one_stream_carries_many_watches_and_cancels_one,
    watch_below_the_compact_revision_is_cancelled,
    negative_start_revision_is_cancelled,
    slow_watcher_blocks_no_one_and_catches_up,
    watches_sharing_a_lagging_stream_each_get_exactly_theirs,
    progress_request_reports_the_current_revision,
    a_stream_that_many_commits_pass_by_stays_current,
    periodic_progress_reaches_idle_watches,
    transaction_events_arrive_in_one_response,
    oversized_revision_is_fragmented_when_asked,
    watches_created_under_concurrent_writes_miss_nothing,
    prev_kv_watches_created_under_concurrent_overwrites_get_every_previous_value,
    lease_grant_ids_and_ttl_bounds,
    lease_revoke_deletes_every_key_in_one_revision,
    lease_keep_alive_and_time_to_live,
    expired_lease_deletes_keys_and_watchers_see_it,
    puts_attach_and_detach_leases,
    a_watch_on_a_server_that_stops_answering_ends,
);

const WAIT: Duration = Duration::from_secs(10);

/// The next response on a watch stream, failing the test after 10 s.
async fn next(stream: &mut WatchStream) -> anyhow::Result<WatchResponse> {
    match tokio::time::timeout(WAIT, stream.message()).await {
        Ok(Ok(Some(resp))) => Ok(resp),
        Ok(Ok(None)) => anyhow::bail!("watch stream ended"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => anyhow::bail!("no watch response within {WAIT:?}"),
    }
}

/// Collects events from a stream until `n` have arrived.
async fn events(
    stream: &mut WatchStream,
    n: usize,
) -> anyhow::Result<Vec<(EventType, String, String, i64)>> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = next(stream).await?;
        for e in resp.events() {
            let kv = e.kv().ok_or_else(|| anyhow::anyhow!("event without kv"))?;
            out.push((
                e.event_type(),
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            ));
        }
    }
    Ok(out)
}

async fn watch_replays_history_then_follows_live_changes(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("w", "1", None).await?; // 2
    c.put("w", "2", None).await?; // 3
    c.delete("w", None).await?; // 4
    let mut stream = c
        .watch("w", Some(WatchOptions::new().with_start_revision(2)))
        .await?;
    let created = next(&mut stream).await?;
    assert!(created.created());
    let history = events(&mut stream, 3).await?;
    assert_eq!(
        history,
        [
            (EventType::Put, "w".into(), "1".into(), 2),
            (EventType::Put, "w".into(), "2".into(), 3),
            (EventType::Delete, "w".into(), "".into(), 4),
        ]
    );
    c.put("w", "3", None).await?;
    assert_eq!(
        events(&mut stream, 1).await?,
        [(EventType::Put, "w".into(), "3".into(), 5)]
    );
    // start_revision 0 means "from now on".
    let mut now = c.watch("w", None).await?;
    next(&mut now).await?;
    c.put("w", "4", None).await?;
    assert_eq!(
        events(&mut now, 1).await?,
        [(EventType::Put, "w".into(), "4".into(), 6)]
    );
    Ok(())
}

async fn watch_filters_prefixes_and_prev_kv(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let mut no_put = c
        .watch(
            "p/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoPut])
                    .with_prev_key(),
            ),
        )
        .await?;
    let mut no_delete = c
        .watch(
            "p/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoDelete]),
            ),
        )
        .await?;
    next(&mut no_put).await?;
    next(&mut no_delete).await?;
    c.put("p/a", "1", None).await?;
    c.put("other", "x", None).await?;
    c.put("p/b", "2", None).await?;
    c.delete("p/a", None).await?;
    let resp = next(&mut no_put).await?;
    let e = &resp.events()[0];
    assert_eq!(e.event_type(), EventType::Delete);
    assert_eq!(e.kv().map(|kv| kv.key()), Some(&b"p/a"[..]));
    assert_eq!(
        e.prev_kv().map(|kv| kv.value()),
        Some(&b"1"[..]),
        "prev_kv carries the deleted value"
    );
    let puts = events(&mut no_delete, 2).await?;
    assert_eq!(
        puts.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        ["p/a", "p/b"]
    );
    assert!(puts.iter().all(|e| e.0 == EventType::Put));
    Ok(())
}

async fn one_stream_carries_many_watches_and_cancels_one(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let mut stream = c
        .watch("a", Some(WatchOptions::new().with_watch_id(7)))
        .await?;
    assert_eq!(next(&mut stream).await?.watch_id(), 7);
    stream
        .watch("b", Some(WatchOptions::new().with_watch_id(8)))
        .await?;
    assert_eq!(next(&mut stream).await?.watch_id(), 8);
    stream.watch("c", None).await?;
    let auto = next(&mut stream).await?;
    assert!(auto.created());
    // A duplicate id is refused without disturbing the others.
    stream
        .watch("d", Some(WatchOptions::new().with_watch_id(7)))
        .await?;
    let dup = next(&mut stream).await?;
    assert!(
        dup.created() && dup.canceled(),
        "duplicate id must be refused: {dup:?}"
    );
    assert_eq!(dup.watch_id(), -1);
    stream.cancel(8).await?;
    let cancelled = next(&mut stream).await?;
    assert!(cancelled.canceled());
    assert_eq!(cancelled.watch_id(), 8);
    c.put("b", "ignored", None).await?;
    c.put("a", "1", None).await?;
    c.put("c", "2", None).await?;
    let first = next(&mut stream).await?;
    assert_eq!(
        (
            first.watch_id(),
            first.events()[0].kv().map(|kv| kv.key().to_vec())
        ),
        (7, Some(b"a".to_vec()))
    );
    let second = next(&mut stream).await?;
    assert_eq!(second.watch_id(), auto.watch_id());
    assert_eq!(
        second.events()[0].kv().map(|kv| kv.key().to_vec()),
        Some(b"c".to_vec())
    );
    Ok(())
}

async fn watch_below_the_compact_revision_is_cancelled(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for i in 0..6 {
        c.put("k", format!("{i}"), None).await?; // 2..=7
    }
    c.compact(5, None).await?;
    let mut old = c
        .watch("k", Some(WatchOptions::new().with_start_revision(3)))
        .await?;
    let mut resp = next(&mut old).await?;
    if resp.created() && !resp.canceled() {
        resp = next(&mut old).await?;
    }
    assert!(resp.canceled(), "{resp:?}");
    assert_eq!(resp.compact_revision(), 5);
    // Watching at the compact revision is legal.
    let mut at = c
        .watch("k", Some(WatchOptions::new().with_start_revision(5)))
        .await?;
    next(&mut at).await?;
    let got = events(&mut at, 3).await?;
    assert_eq!(got.iter().map(|e| e.3).collect::<Vec<_>>(), [5, 6, 7]);
    Ok(())
}

async fn negative_start_revision_is_cancelled(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("k", "v", None).await?;
    let mut stream = c
        .watch("k", Some(WatchOptions::new().with_start_revision(-3)))
        .await?;
    assert!(next(&mut stream).await?.created());
    let resp = next(&mut stream).await?;
    assert!(resp.canceled());
    assert_eq!(
        resp.compact_revision(),
        -1,
        "never compacted: etcd reports -1"
    );
    Ok(())
}

async fn slow_watcher_blocks_no_one_and_catches_up(server: &Server) -> anyhow::Result<()> {
    const PUTS: usize = 3000;
    let mut c = server.client().await?;
    // A watcher that reads nothing while thousands of 1 KiB events are written.
    let mut slow = c
        .watch(
            "s/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await?;
    next(&mut slow).await?;
    let mut fast = c
        .watch("s/", Some(WatchOptions::new().with_prefix()))
        .await?;
    next(&mut fast).await?;
    let reader = tokio::spawn(async move { events(&mut fast, PUTS).await });
    let value = "x".repeat(1024);
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = server.client().await?;
        let value = value.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PUTS / 4 {
                c.put(format!("s/{w}/{i}"), value.clone(), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        tokio::time::timeout(Duration::from_secs(120), w).await???;
    }
    let fast_events = tokio::time::timeout(Duration::from_secs(60), reader).await???;
    assert_eq!(
        fast_events.len(),
        PUTS,
        "the other watcher got everything while one lagged"
    );
    let slow_events = events(&mut slow, PUTS).await?;
    let revs: Vec<i64> = slow_events.iter().map(|e| e.3).collect();
    assert_eq!(
        revs,
        (2..2 + PUTS as i64).collect::<Vec<_>>(),
        "the slow watcher caught up in order"
    );
    Ok(())
}

/// What one watch received: (type, key, value, revision, previous value).
type Seen = Vec<(EventType, String, String, i64, Option<String>)>;

/// Watches with different ranges, filters and prev_kv on one stream (two of them alike, one
/// alike but starting at a future revision) that nobody reads while 1,200 commits go by:
/// once read, each gets exactly its own events, in order, in responses of at most 1,000
/// whole revisions.
async fn watches_sharing_a_lagging_stream_each_get_exactly_theirs(
    server: &Server,
) -> anyhow::Result<()> {
    const OPS: i64 = 1200;
    let mut c = server.client().await?;
    let all_prev = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_watch_id(1);
    let mut stream = c.watch("m/", Some(all_prev)).await?;
    next(&mut stream).await?;
    let later = 2 + OPS / 2;
    let more = [
        ("m/odd/", WatchOptions::new().with_prefix().with_watch_id(2)),
        (
            "m/",
            WatchOptions::new()
                .with_prefix()
                .with_filters([WatchFilterType::NoDelete])
                .with_watch_id(3),
        ),
        ("m/even/0", WatchOptions::new().with_watch_id(4)),
        ("m/odd/", WatchOptions::new().with_prefix().with_watch_id(5)),
        (
            "m/odd/",
            WatchOptions::new()
                .with_prefix()
                .with_start_revision(later)
                .with_watch_id(6),
        ),
    ];
    for (key, options) in more {
        stream.watch(key, Some(options)).await?;
        next(&mut stream).await?;
    }

    // Every op is one commit at revision 2 + i; the expected events follow from the log.
    let padding = "p".repeat(1024);
    let mut current: std::collections::HashMap<String, String> = Default::default();
    let mut expected: [Seen; 6] = Default::default();
    for i in 0..OPS {
        let key = format!("m/{}/{}", if i % 2 == 1 { "odd" } else { "even" }, i % 40);
        let rev = 2 + i;
        let prev = current.get(&key).cloned();
        let (kind, value) = if i % 7 == 6 && prev.is_some() {
            c.delete(key.as_str(), None).await?;
            current.remove(&key);
            (EventType::Delete, String::new())
        } else {
            let value = format!("{i}{padding}");
            c.put(key.as_str(), value.as_str(), None).await?;
            current.insert(key.clone(), value.clone());
            (EventType::Put, value)
        };
        let event = |prev: Option<String>| (kind, key.clone(), value.clone(), rev, prev);
        expected[0].push(event(prev));
        if key.starts_with("m/odd/") {
            expected[1].push(event(None));
        }
        if kind == EventType::Put {
            expected[2].push(event(None));
        }
        if key == "m/even/0" {
            expected[3].push(event(None));
        }
        if key.starts_with("m/odd/") {
            expected[4].push(event(None));
            if rev >= later {
                expected[5].push(event(None));
            }
        }
    }

    let mut seen: [Seen; 6] = Default::default();
    while seen.iter().zip(&expected).any(|(s, e)| s.len() < e.len()) {
        let resp = next(&mut stream).await?;
        let id = resp.watch_id();
        anyhow::ensure!((1..=6).contains(&id), "unexpected response {resp:?}");
        let revs: Vec<i64> = resp
            .events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .collect();
        let distinct: HashSet<i64> = revs.iter().copied().collect();
        assert!(
            distinct.len() <= 1000,
            "{} revisions in one response",
            distinct.len()
        );
        let header = resp.header().map_or(0, |h| h.revision());
        assert!(
            revs.iter().all(|&r| r <= header),
            "events after the header's revision {header}"
        );
        for e in resp.events() {
            let kv = e.kv().ok_or_else(|| anyhow::anyhow!("event without kv"))?;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            seen[(id - 1) as usize].push((
                e.event_type(),
                text(kv.key()),
                text(kv.value()),
                kv.mod_revision(),
                e.prev_kv().map(|p| text(p.value())),
            ));
        }
    }
    for (watch, (seen, expected)) in seen.iter().zip(&expected).enumerate() {
        assert_eq!(
            seen.len(),
            expected.len(),
            "watch {} event count",
            watch + 1
        );
        for (s, e) in seen.iter().zip(expected) {
            assert_eq!(s, e, "watch {}", watch + 1);
        }
    }
    Ok(())
}

async fn progress_request_reports_the_current_revision(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let mut stream = c.watch("quiet", None).await?;
    next(&mut stream).await?;
    c.put("elsewhere", "1", None).await?;
    c.put("elsewhere", "2", None).await?;
    stream.request_progress().await?;
    let resp = next(&mut stream).await?;
    assert_eq!(resp.watch_id(), -1);
    assert!(resp.events().is_empty());
    assert_eq!(resp.header().map(|h| h.revision()), Some(3));
    Ok(())
}

/// A stream whose watches select none of many commits still knows where the store is: a
/// progress request reports the latest revision, a watch added to it from "now" starts
/// after the latest write, and a later write to the first watch's keys reaches it.
async fn a_stream_that_many_commits_pass_by_stays_current(server: &Server) -> anyhow::Result<()> {
    let revision = |r: Option<&etcd_client::ResponseHeader>| r.map_or(0, |h| h.revision());
    let mut c = server.client().await?;
    let mut stream = c
        .watch("quiet/", Some(WatchOptions::new().with_prefix()))
        .await?;
    let quiet = next(&mut stream).await?.watch_id();
    let mut last = 0;
    for i in 0..200 {
        last = revision(c.put(format!("busy/{i}"), "v", None).await?.header());
    }
    stream.request_progress().await?;
    let progress = next(&mut stream).await?;
    assert_eq!(
        (progress.watch_id(), revision(progress.header())),
        (-1, last)
    );
    stream
        .watch("busy/", Some(WatchOptions::new().with_prefix()))
        .await?;
    let busy = next(&mut stream).await?;
    assert!(busy.created(), "{busy:?}");
    let after = revision(c.put("busy/after", "v", None).await?.header());
    let resp = next(&mut stream).await?;
    let revisions = |r: &WatchResponse| -> Vec<i64> {
        r.events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .collect()
    };
    assert_eq!(
        (resp.watch_id(), revisions(&resp)),
        (busy.watch_id(), vec![after])
    );
    let quiet_put = revision(c.put("quiet/a", "v", None).await?.header());
    let resp = next(&mut stream).await?;
    assert_eq!(
        (resp.watch_id(), revisions(&resp)),
        (quiet, vec![quiet_put])
    );
    Ok(())
}

async fn periodic_progress_reaches_idle_watches(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("x", "1", None).await?;
    let mut stream = c
        .watch("idle", Some(WatchOptions::new().with_progress_notify()))
        .await?;
    let created = next(&mut stream).await?;
    let resp = next(&mut stream).await?;
    assert_eq!(resp.watch_id(), created.watch_id());
    assert!(resp.events().is_empty());
    assert_eq!(resp.header().map(|h| h.revision()), Some(2));
    Ok(())
}

async fn transaction_events_arrive_in_one_response(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let mut stream = c
        .watch("t/", Some(WatchOptions::new().with_prefix()))
        .await?;
    next(&mut stream).await?;
    let ops: Vec<TxnOp> = (0..5)
        .map(|i| TxnOp::put(format!("t/{i}"), "v", None))
        .collect();
    c.txn(Txn::new().and_then(ops)).await?;
    let resp = next(&mut stream).await?;
    assert_eq!(
        resp.events().len(),
        5,
        "all events of one revision in one response"
    );
    assert!(resp
        .events()
        .iter()
        .all(|e| e.kv().map(|kv| kv.mod_revision()) == Some(2)));
    Ok(())
}

async fn oversized_revision_is_fragmented_when_asked(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for i in 0..3 {
        c.put(format!("f/{i}"), vec![b'x'; 1024 * 1024], None)
            .await?;
    }
    let mut stream = c
        .watch(
            "f/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_fragment(),
            ),
        )
        .await?;
    next(&mut stream).await?;
    // One revision deleting 3 MiB of previous values: more than --max-request-bytes.
    c.delete("f/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await?;
    let mut fragments = Vec::new();
    let mut events = 0;
    loop {
        let resp = next(&mut stream).await?;
        events += resp.events().len();
        fragments.push(resp.0.fragment);
        if !resp.0.fragment {
            break;
        }
    }
    assert_eq!(events, 3);
    assert!(
        fragments.len() >= 2,
        "expected fragments, got {fragments:?}"
    );
    assert!(fragments[..fragments.len() - 1].iter().all(|f| *f));
    Ok(())
}

/// `writers` clients, each putting `i` (0 to `puts` - 1) in turn at `key(writer, i)`.
async fn spawn_writers(
    server: &Server,
    writers: usize,
    puts: usize,
    key: fn(usize, usize) -> String,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = server.client().await?;
        tasks.push(tokio::spawn(async move {
            for i in 0..puts {
                c.put(key(w, i), format!("{i}"), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    Ok(tasks)
}

/// Watches asking for previous values, created one by one while keys are overwritten (the
/// first of them is the only one on the server when it registers): every event carries
/// exactly the value its put replaced.
async fn prev_kv_watches_created_under_concurrent_overwrites_get_every_previous_value(
    server: &Server,
) -> anyhow::Result<()> {
    const WRITERS: usize = 4;
    const PUTS: usize = 150;
    let writers = spawn_writers(server, WRITERS, PUTS, |w, _| format!("o/{w}")).await?;
    let mut watches = Vec::new();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut stream = Client::connect([server.endpoint()], None)
            .await?
            .watch(
                "o/",
                Some(WatchOptions::new().with_prefix().with_prev_key()),
            )
            .await?;
        next(&mut stream).await?;
        watches.push(stream);
    }
    for w in writers {
        w.await??;
    }
    let last = 1 + (WRITERS * PUTS) as i64;
    let mut checked = 0;
    for mut stream in watches {
        let mut rev = 0;
        while rev != last {
            let resp = next(&mut stream).await?;
            for e in resp.events() {
                let kv = e.kv().ok_or_else(|| anyhow::anyhow!("event without kv"))?;
                rev = kv.mod_revision();
                let value: usize = kv.value_str()?.parse()?;
                let prev = e.prev_kv().map(|p| p.value_str().map(str::to_string));
                let expected = value.checked_sub(1).map(|v| v.to_string());
                assert_eq!(
                    prev.transpose()?,
                    expected,
                    "{} = {value} at revision {rev}: the previous value",
                    kv.key_str()?
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "the watches saw no event");
    Ok(())
}

async fn watches_created_under_concurrent_writes_miss_nothing(
    server: &Server,
) -> anyhow::Result<()> {
    const WRITERS: usize = 4;
    const PUTS: usize = 150;
    let writers = spawn_writers(server, WRITERS, PUTS, |w, i| format!("g/{w}/{i}")).await?;
    // Watches created while the writers run: some from a past revision, some from "now".
    let mut c = server.client().await?;
    let mut watches = Vec::new();
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let current = c
            .get(
                "g/",
                Some(GetOptions::new().with_count_only().with_prefix()),
            )
            .await?;
        let rev = current.header().map(|h| h.revision()).unwrap_or(1);
        let opts = WatchOptions::new().with_prefix();
        let (opts, from) = if round % 2 == 0 {
            (
                opts.with_start_revision(rev.max(2) - 1),
                Some(rev.max(2) - 1),
            )
        } else {
            (opts, None)
        };
        let mut stream = Client::connect([server.endpoint()], None)
            .await?
            .watch("g/", Some(opts))
            .await?;
        next(&mut stream).await?;
        watches.push((stream, from));
    }
    for w in writers {
        w.await??;
    }
    let last = 1 + (WRITERS * PUTS) as i64;
    for (mut stream, from) in watches {
        let mut revs = Vec::new();
        while revs.last().copied() != Some(last) {
            let resp = next(&mut stream).await?;
            revs.extend(
                resp.events()
                    .iter()
                    .filter_map(|e| e.kv().map(|kv| kv.mod_revision())),
            );
        }
        let first = revs[0];
        if let Some(from) = from {
            assert_eq!(
                first,
                from.max(2),
                "history starts at the requested revision"
            );
        }
        // Ordered, unique and without gaps: exactly first..=last.
        assert_eq!(
            revs,
            (first..=last).collect::<Vec<_>>(),
            "events out of order, duplicated or missing"
        );
    }
    Ok(())
}

async fn lease_grant_ids_and_ttl_bounds(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let auto = c.lease_grant(60, None).await?;
    assert!(auto.id() > 0);
    assert_eq!(auto.ttl(), 60);
    let chosen = c
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(4242)))
        .await?;
    assert_eq!((chosen.id(), chosen.ttl()), (4242, 30));
    assert_etcd_error(
        c.lease_grant(30, Some(LeaseGrantOptions::new().with_id(4242)))
            .await,
        Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_etcd_error(
        c.lease_grant(9_000_000_001, None).await,
        Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    let short = c.lease_grant(1, None).await?;
    assert!(
        short.ttl() >= 1 && short.ttl() <= 2,
        "a 1 s TTL is raised to the minimum: {}",
        short.ttl()
    );
    let listed: HashSet<i64> = c.leases().await?.leases().iter().map(|l| l.id()).collect();
    assert!(listed.contains(&auto.id()) && listed.contains(&4242) && listed.contains(&short.id()));
    Ok(())
}

async fn lease_revoke_deletes_every_key_in_one_revision(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let lease = c.lease_grant(60, None).await?.id();
    for k in ["l/a", "l/b", "l/c"] {
        c.put(k, "v", Some(PutOptions::new().with_lease(lease)))
            .await?;
    }
    c.put("l/free", "v", None).await?;
    let mut stream = c
        .watch("l/", Some(WatchOptions::new().with_prefix()))
        .await?;
    next(&mut stream).await?;
    c.lease_revoke(lease).await?;
    let resp = next(&mut stream).await?;
    assert_eq!(resp.events().len(), 3);
    assert!(resp
        .events()
        .iter()
        .all(|e| e.event_type() == EventType::Delete));
    let revs: HashSet<i64> = resp
        .events()
        .iter()
        .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
        .collect();
    assert_eq!(revs.len(), 1, "one revision for the whole revocation");
    let left = c.get("l/", Some(GetOptions::new().with_prefix())).await?;
    assert_eq!(left.kvs().len(), 1);
    assert_etcd_error(
        c.lease_revoke(lease).await,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    Ok(())
}

async fn lease_keep_alive_and_time_to_live(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let lease = c.lease_grant(20, None).await?.id();
    c.put("ka", "v", Some(PutOptions::new().with_lease(lease)))
        .await?;
    let (mut keeper, mut responses) = c.lease_keep_alive(lease).await?;
    keeper.keep_alive().await?;
    let resp = tokio::time::timeout(WAIT, responses.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("no keep-alive response"))?;
    assert_eq!((resp.id(), resp.ttl()), (lease, 20));
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    assert_eq!(ttl.granted_ttl(), 20);
    assert!(ttl.ttl() > 15 && ttl.ttl() <= 20, "remaining {}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"ka".to_vec()]);
    let without = c.lease_time_to_live(lease, None).await?;
    assert!(without.keys().is_empty());
    // Unknown leases: TTL -1 from TimeToLive, TTL 0 from KeepAlive; neither is an error.
    assert_eq!(c.lease_time_to_live(987654, None).await?.ttl(), -1);
    // The server answers TTL 0, which etcd-client reports as "lease not found".
    let unknown = async {
        let (mut keeper, mut responses) = c.lease_keep_alive(987654).await?;
        keeper.keep_alive().await?;
        let resp = responses.message().await?;
        Ok::<_, etcd_client::Error>(resp.map(|r| r.ttl()))
    };
    match tokio::time::timeout(WAIT, unknown).await? {
        Ok(ttl) => assert_eq!(ttl, Some(0)),
        Err(e) => assert!(e.to_string().contains("lease not found"), "{e}"),
    }
    Ok(())
}

async fn expired_lease_deletes_keys_and_watchers_see_it(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let lease = c.lease_grant(2, None).await?;
    c.put("exp", "v", Some(PutOptions::new().with_lease(lease.id())))
        .await?;
    let mut stream = c.watch("exp", None).await?;
    next(&mut stream).await?;
    let started = Instant::now();
    let resp = next(&mut stream).await?;
    assert_eq!(resp.events()[0].event_type(), EventType::Delete);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(c.get("exp", None).await?.kvs().is_empty());
    assert_eq!(c.lease_time_to_live(lease.id(), None).await?.ttl(), -1);
    Ok(())
}

async fn puts_attach_and_detach_leases(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let lease = c.lease_grant(60, None).await?.id();
    c.put("a", "1", Some(PutOptions::new().with_lease(lease)))
        .await?;
    c.put("b", "1", Some(PutOptions::new().with_lease(lease)))
        .await?;
    assert_eq!(c.get("a", None).await?.kvs()[0].lease(), lease);
    // ignore_lease keeps the lease; a plain put detaches it.
    c.put("a", "2", Some(PutOptions::new().with_ignore_lease()))
        .await?;
    assert_eq!(c.get("a", None).await?.kvs()[0].lease(), lease);
    c.put("b", "2", None).await?;
    assert_eq!(c.get("b", None).await?.kvs()[0].lease(), 0);
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    assert_eq!(ttl.keys(), [b"a".to_vec()]);
    c.lease_revoke(lease).await?;
    assert!(c.get("a", None).await?.kvs().is_empty());
    assert_eq!(
        c.get("b", None).await?.kvs()[0].value(),
        b"2",
        "a detached key outlives the lease"
    );
    Ok(())
}

/// Resumes a paused server when the test ends, whichever way it ends.
struct Resume<'a>(&'a Server);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

/// A server that stops answering (SIGSTOP: frozen, or cut off by a partition) keeps its TCP
/// connections open: without the client's keep-alive pings a watch on it would wait for
/// ever, and an agent watching through it would never hear of a change made elsewhere. The
/// stream ends instead, once a ping goes unanswered, so its owner can resume it on another
/// member; after the server comes back a new watch works.
async fn a_watch_on_a_server_that_stops_answering_ends(server: &Server) -> anyhow::Result<()> {
    let mut config = server.connect_config();
    config.keepalive_time = ferry_client::MIN_KEEPALIVE_TIME;
    config.keepalive_timeout = Duration::from_secs(2);
    let mut c = ferry_client::connect(&config).await?;
    let mut stream = c.watch("frozen", None).await?;
    c.put("frozen", "1", None).await?;
    assert_eq!(events(&mut stream, 1).await?[0].2, "1");
    server.pause()?;
    let resume = Resume(server);
    // Far longer than the keep-alive time and timeout; a hang is the failure.
    let limit = Duration::from_secs(60);
    match tokio::time::timeout(limit, stream.message()).await {
        Err(_) => anyhow::bail!("the watch on a paused server was still open after {limit:?}"),
        Ok(Ok(Some(resp))) => anyhow::bail!("a paused server answered: {resp:?}"),
        Ok(Ok(None) | Err(_)) => {}
    }
    drop(resume);
    let mut c = ferry_client::connect(&config).await?;
    let mut stream = c.watch("frozen", None).await?;
    c.put("frozen", "2", None).await?;
    assert_eq!(events(&mut stream, 1).await?[0].2, "2");
    Ok(())
}
