//! The writer acknowledges a batch once its log record is synced and writes it into redb
//! later, many batches at once. Until then reads are served from memory: these tests hold
//! reads, history and whole-table readers to the same answers on both sides of a flush, a
//! restart, and flushes racing readers.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{PbDeleteRequest, PbPutRequest, PbRangeRequest, PbTxnRequest};
use ferry_store::mvcc::backend::KV;
use ferry_store::mvcc::kvstore::{Limits, MvccStore, WriteRequest, WriteResponse};
use ferry_store::StoreError;
use redb::ReadableTableMetadata;

fn limits() -> Limits {
    Limits {
        max_txn_ops: 128,
        quota_backend_bytes: 8 * 1024 * 1024 * 1024,
        feed_capacity: 1024,
    }
}

fn put(key: &str, value: &[u8], lease: i64) -> WriteRequest {
    WriteRequest::Put(PbPutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        lease,
        prev_kv: true,
        ..Default::default()
    })
}

fn prefix(p: &str) -> (Vec<u8>, Vec<u8>) {
    let mut end = p.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    (p.as_bytes().to_vec(), end)
}

fn range_at(store: &MvccStore, p: &str, revision: i64) -> Result<Vec<String>, StoreError> {
    let (key, range_end) = prefix(p);
    let resp = store.range(&PbRangeRequest {
        key,
        range_end,
        revision,
        ..Default::default()
    })?;
    Ok(resp
        .kvs
        .iter()
        .map(|kv| {
            format!(
                "{}={} mod={} create={} version={} lease={}",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value),
                kv.mod_revision,
                kv.create_revision,
                kv.version,
                kv.lease
            )
        })
        .collect())
}

fn history_of(store: &MvccStore, from: i64) -> Result<Vec<String>, StoreError> {
    let to = store.current_revision();
    Ok(store
        .history(from, to, true)?
        .iter()
        .map(|e| {
            format!(
                "{}@{} v={} prev={:?}",
                String::from_utf8_lossy(&e.kv.key),
                e.kv.mod_revision,
                e.kv.version,
                e.prev.as_ref().map(|p| (
                    String::from_utf8_lossy(&p.value).into_owned(),
                    p.mod_revision
                ))
            )
        })
        .collect())
}

/// Everything a reader can see: the live keys, the keys at every past revision, history.
fn everything(store: &MvccStore) -> Result<Vec<String>, StoreError> {
    let current = store.current_revision();
    let mut out = Vec::new();
    for rev in 1..=current {
        out.push(format!("-- at {rev}"));
        out.extend(range_at(store, "k/", rev)?);
    }
    out.push("-- history".into());
    out.extend(history_of(store, 1)?);
    Ok(out)
}

/// Rows in redb's `kv` table, as whole-table readers (a snapshot, a hash) see them.
fn stored_rows(store: &MvccStore) -> anyhow::Result<u64> {
    let txn = store.begin_read_durable()?;
    Ok(txn.open_table(KV)?.len()?)
}

async fn write(store: &MvccStore, req: WriteRequest) -> anyhow::Result<WriteResponse> {
    Ok(store.write(req).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_the_same_before_a_flush_after_it_and_after_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = MvccStore::open(dir.path(), limits())?;
    let lease = match write(&store, WriteRequest::LeaseGrant { id: 0, ttl: 600 }).await? {
        WriteResponse::LeaseGranted { id, .. } => id,
        _ => anyhow::bail!("a lease grant answered something else"),
    };
    for i in 0..6 {
        write(&store, put(&format!("k/{i}"), b"one", 0)).await?;
    }
    // Overwrites read their previous value back from the unflushed rows.
    match write(&store, put("k/1", b"two", lease)).await? {
        WriteResponse::Put(resp) => {
            let prev = resp.prev_kv.ok_or_else(|| anyhow::anyhow!("no prev_kv"))?;
            assert_eq!(prev.value, b"one");
        }
        _ => anyhow::bail!("a put answered something else"),
    }
    write(
        &store,
        WriteRequest::Delete(PbDeleteRequest {
            key: b"k/2".to_vec(),
            range_end: b"k/4".to_vec(),
            prev_kv: true,
        }),
    )
    .await?;
    write(
        &store,
        WriteRequest::Txn(PbTxnRequest {
            success: vec![etcd_client::proto::PbTxnRequestOp {
                request: Some(etcd_client::proto::PbTxnOpRequest::RequestPut(
                    PbPutRequest {
                        key: b"k/5".to_vec(),
                        value: b"three".to_vec(),
                        ..Default::default()
                    },
                )),
            }],
            ..Default::default()
        }),
    )
    .await?;

    let before = everything(&store)?;
    assert!(
        before.iter().any(|l| l.starts_with("k/1=two")),
        "{before:?}"
    );
    store.flush().await?;
    assert_eq!(
        everything(&store)?,
        before,
        "a flush changed what reads see"
    );
    assert_eq!(
        stored_rows(&store)?,
        10,
        "whole-table readers see every acknowledged change after a flush"
    );

    // Writes after the flush are unflushed again; a restart replays them from the log.
    write(&store, put("k/9", b"four", 0)).await?;
    let before = everything(&store)?;
    drop(store);
    let store = MvccStore::open(dir.path(), limits())?;
    assert_eq!(
        everything(&store)?,
        before,
        "a restart changed what reads see"
    );
    Ok(())
}

/// Compaction removes rows from redb at the flush that follows it, including rows that were
/// never flushed; reads at the compact revision are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_of_unflushed_rows_leaves_the_same_reads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = MvccStore::open(dir.path(), limits())?;
    for round in 0..3 {
        for i in 0..4 {
            write(
                &store,
                put(&format!("k/{i}"), format!("r{round}").as_bytes(), 0),
            )
            .await?;
        }
    }
    write(
        &store,
        WriteRequest::Delete(PbDeleteRequest {
            key: b"k/0".to_vec(),
            ..Default::default()
        }),
    )
    .await?;
    let at = store.current_revision();
    let live = range_at(&store, "k/", at)?;
    write(&store, WriteRequest::Compact(at)).await?;
    assert_eq!(range_at(&store, "k/", at)?, live);
    // As etcd: a tombstone at the compact revision goes with the compaction.
    assert_eq!(history_of(&store, at)?, Vec::<String>::new());
    assert!(matches!(
        range_at(&store, "k/", at - 1),
        Err(StoreError::Compacted)
    ));
    // Three live keys remain, each one row: the compacted rows never reach redb.
    assert_eq!(stored_rows(&store)?, 3);
    drop(store);
    let store = MvccStore::open(dir.path(), limits())?;
    assert_eq!(range_at(&store, "k/", at)?, live);
    Ok(())
}

/// Readers racing the writer's flushes (every 256 puts of 4 KiB) and compactions never miss
/// a value: each row is in memory or in the snapshot they read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_racing_flushes_always_find_every_value() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = MvccStore::open(dir.path(), limits())?;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..2 {
        let store = store.clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let current = store.current_revision();
                let keys = range_at(&store, "k/", 0)?;
                for line in &keys {
                    anyhow::ensure!(line.contains("=value-"), "reader {r}: {line}");
                }
                match store.history((current - 40).max(1), current, true) {
                    Ok(events) => anyhow::ensure!(
                        events.len() as i64 >= 40.min(current - 1),
                        "reader {r}: {} events below {current}",
                        events.len()
                    ),
                    Err(StoreError::Compacted) => {}
                    Err(e) => anyhow::bail!("reader {r}: history: {e}"),
                }
                reads += 1;
                tokio::task::yield_now().await;
            }
            anyhow::Ok(reads)
        }));
    }
    let value = vec![b'x'; 4096];
    for i in 0..3000 {
        let mut v = format!("value-{i}-").into_bytes();
        v.extend_from_slice(&value);
        write(&store, put(&format!("k/{:02}", i % 64), &v, 0)).await?;
        if i % 700 == 699 {
            write(
                &store,
                WriteRequest::Compact(store.current_revision() - 100),
            )
            .await?;
        }
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        let reads = tokio::time::timeout(Duration::from_secs(30), reader).await???;
        assert!(reads > 0);
    }
    assert_eq!(range_at(&store, "k/", 0)?.len(), 64);
    Ok(())
}
