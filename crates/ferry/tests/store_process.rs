//! `ferry store` as a process: durability across kill -9, the data dir lock, snapshots and
//! restore, flags, auto-compaction and refusing membership changes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{ferry_bin, start, Kind, Server};
use etcd_client::{Client, GetOptions};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_under_load() -> anyhow::Result<()> {
    let mut server = start(Kind::Ferry, &[]).await?;
    let mut acknowledged: Vec<(String, i64)> = Vec::new();
    for round in 0..3 {
        let mut writers = Vec::new();
        for w in 0..8 {
            let mut c = server.client().await?;
            writers.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0.. {
                    let key = format!("crash/{round}/{w}/{i}");
                    match c.put(key.clone(), format!("value-{i}"), None).await {
                        Ok(r) => acks.push((key, r.header().map(|h| h.revision()).unwrap_or(0))),
                        Err(_) => break,
                    }
                }
                acks
            }));
        }
        // Let the load build up, then kill the server mid-stream.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut probe = server.client().await?;
        while probe
            .get(
                "crash/",
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?
            .count()
            < 200 * (round + 1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill();
        for w in writers {
            acknowledged.extend(w.await?);
        }
        server.restart().await?;
        let mut c = server.client().await?;
        for (key, rev) in &acknowledged {
            let got = c.get(key.as_str(), None).await?;
            let kv = got
                .kvs()
                .first()
                .unwrap_or_else(|| panic!("acknowledged {key} is lost"));
            assert_eq!(
                kv.mod_revision(),
                *rev,
                "{key} has the revision it was acknowledged at"
            );
        }
        let mut revs: Vec<i64> = acknowledged.iter().map(|(_, r)| *r).collect();
        revs.sort_unstable();
        let before = revs.len();
        revs.dedup();
        assert_eq!(
            before,
            revs.len(),
            "two acknowledged writes share a revision"
        );
        let max = revs.last().copied().unwrap_or(0);
        let next = c.put("after-restart", "x", None).await?;
        assert!(
            next.header().map(|h| h.revision()).unwrap_or(0) > max,
            "revisions never repeat"
        );
    }
    assert!(
        acknowledged.len() >= 300,
        "only {} writes were acknowledged",
        acknowledged.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_is_refused() -> anyhow::Result<()> {
    let server = start(Kind::Ferry, &[]).await?;
    let port = ferry_testkit::free_port()?;
    let out = Command::new(ferry_bin())
        .args(["store", "--data-dir"])
        .arg(server.data_dir())
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{port}")])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already in use by another ferry store process"),
        "stderr: {stderr}"
    );
    server.client().await?.put("still", "serving", None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_data_is_kept() -> anyhow::Result<()> {
    let mut server = start(Kind::Ferry, &[]).await?;
    server.client().await?.put("kept", "yes", None).await?;
    let status = server.terminate()?;
    assert!(status.success(), "exit status {status}");
    server.restart().await?;
    let got = server.client().await?.get("kept", None).await?;
    assert_eq!(got.kvs()[0].value(), b"yes");
    Ok(())
}

/// A client that connected and says nothing (no HTTP/2 preface, no TLS handshake) does not
/// hold up a store told to stop: a handshake left waiting cost the whole 2 s shutdown grace
/// (meant for requests in flight) before the store closed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_does_not_wait_for_silent_clients() -> anyhow::Result<()> {
    let certs = common::certs::Certs::generate()?;
    let cert = certs.server_cert.display().to_string();
    let key = certs.server_key.display().to_string();
    let tls_flags = ["--cert-file", cert.as_str(), "--key-file", key.as_str()];
    let plain = start(Kind::Ferry, &[]).await?;
    let tls = Server::start_tls(Kind::Ferry, ferry_bin(), &tls_flags, certs.client()).await?;
    for mut server in [plain, tls] {
        let endpoint = server.endpoint();
        let address = endpoint
            .rsplit("://")
            .next()
            .unwrap_or(endpoint.as_str())
            .to_string();
        let silent: Vec<std::net::TcpStream> = (0..3)
            .map(|_| std::net::TcpStream::connect(&address))
            .collect::<Result<_, _>>()?;
        // The store serves others meanwhile.
        server.client().await?.put("k", "v", None).await?;
        let asked = Instant::now();
        let status = server.terminate()?;
        assert!(status.success(), "{endpoint}: exit status {status}");
        assert!(
            asked.elapsed() < Duration::from_millis(1500),
            "{endpoint}: the store took {:?} to stop with silent clients connected (the \
             shutdown grace is 2 s)",
            asked.elapsed()
        );
        drop(silent);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restores_into_a_new_store() -> anyhow::Result<()> {
    let server = start(Kind::Ferry, &[]).await?;
    let mut c = server.client().await?;
    for i in 0..100 {
        c.put(format!("snap/{i:03}"), format!("{i}"), None).await?;
    }
    c.delete("snap/050", None).await?;
    c.compact(50, None).await?;
    let mut bytes = Vec::new();
    let mut stream = c.snapshot().await?;
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(chunk.blob());
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("snap.db");
    std::fs::write(&file, &bytes)?;

    // A damaged snapshot is refused and creates nothing.
    let damaged = dir.path().join("damaged.db");
    let mut broken = bytes.clone();
    broken[100] ^= 0xff;
    std::fs::write(&damaged, &broken)?;
    let target = dir.path().join("restored");
    let out = Command::new(ferry_bin())
        .args(["store", "restore", "--snapshot"])
        .arg(&damaged)
        .arg("--data-dir")
        .arg(&target)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256 digest does not match"));
    assert!(
        !target.exists(),
        "a refused restore must not create the data dir"
    );

    let out = Command::new(ferry_bin())
        .args(["store", "restore", "--snapshot"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&target)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = Server::ferry_on(ferry_bin(), &target, &[]).await?;
    let mut r = restored.client().await?;
    let all = r
        .get("snap/", Some(GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(all.count(), 99);
    assert_eq!(all.header().map(|h| h.revision()), Some(102));
    let old = r
        .get("snap/010", Some(GetOptions::new().with_revision(60)))
        .await?;
    assert_eq!(old.kvs()[0].value(), b"10");
    assert!(
        r.get("x", Some(GetOptions::new().with_revision(10)))
            .await
            .is_err(),
        "compaction is kept"
    );
    // Restoring over an existing store is refused.
    let out = Command::new(ferry_bin())
        .args(["store", "restore", "--snapshot"])
        .arg(&file)
        .arg("--data-dir")
        .arg(&target)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a store"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_get_a_clear_error() -> anyhow::Result<()> {
    let server = start(Kind::Ferry, &[]).await?;
    let mut c = server.client().await?;
    let err = c
        .member_add(["http://127.0.0.1:1"], None)
        .await
        .expect_err("member add must fail");
    let s = common::status(err);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(
        s.message().contains("single-member store"),
        "{}",
        s.message()
    );
    assert_eq!(c.member_list().await?.members().len(), 1);
    Ok(())
}

async fn wait_for_compaction(c: &mut Client, below: i64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match c
            .get("k", Some(GetOptions::new().with_revision(below)))
            .await
        {
            Err(e) if e.to_string().contains("compacted") => return Ok(()),
            _ if Instant::now() > deadline => {
                anyhow::bail!("no auto-compaction past revision {below} within 15 s")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_in_revision_mode_keeps_the_last_n() -> anyhow::Result<()> {
    let server = start(
        Kind::Ferry,
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
        ],
    )
    .await?;
    let mut c = server.client().await?;
    for i in 0..30 {
        c.put("k", format!("{i}"), None).await?;
    }
    wait_for_compaction(&mut c, 5).await?;
    // The last 10 revisions stay readable.
    let r = c
        .get("k", Some(GetOptions::new().with_revision(21)))
        .await?;
    assert_eq!(r.kvs()[0].value(), b"19");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_compaction_in_periodic_mode_follows_the_retention() -> anyhow::Result<()> {
    let server = start(
        Kind::Ferry,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "2s",
        ],
    )
    .await?;
    let mut c = server.client().await?;
    for i in 0..10 {
        c.put("k", format!("{i}"), None).await?;
    }
    wait_for_compaction(&mut c, 3).await?;
    assert_eq!(c.get("k", None).await?.kvs()[0].value(), b"9");
    Ok(())
}

#[test]
fn bad_flags_are_refused_with_the_flag_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--auto-compaction-mode",
                "hourly",
                "--auto-compaction-retention",
                "1",
            ],
            "--auto-compaction-mode",
        ),
        (
            &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h",
            ],
            "--auto-compaction-retention",
        ),
        (
            &["--listen-client-urls", "127.0.0.1:2379"],
            "invalid client URL",
        ),
        (&["--max-txn-ops", "0"], "--max-txn-ops"),
    ];
    for (args, expected) in cases {
        let out = Command::new(ferry_bin())
            .args(["store", "--data-dir"])
            .arg(dir.path().join("d"))
            .args(args)
            .output()
            .expect("run ferry");
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: stderr {stderr:?}");
    }
    assert!(
        !dir.path().join("d").exists(),
        "refused flags created the data dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_restart_with_their_full_ttl() -> anyhow::Result<()> {
    use etcd_client::{LeaseTimeToLiveOptions, PutOptions};
    let mut server = start(Kind::Ferry, &[]).await?;
    let mut c = server.client().await?;
    let lease = c.lease_grant(10, None).await?.id();
    c.put("leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await?;
    // Leased once, then written without it: detached, on disk as in memory.
    c.put("detached", "v", Some(PutOptions::new().with_lease(lease)))
        .await?;
    c.put("detached", "w", None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.kill();
    server.restart().await?;
    let mut c = server.client().await?;
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    assert_eq!(ttl.granted_ttl(), 10);
    assert!(
        ttl.ttl() >= 8,
        "the remaining TTL is reset to the full TTL on restart: {}",
        ttl.ttl()
    );
    assert_eq!(
        ttl.keys(),
        [b"leased".to_vec()],
        "key attachments are rebuilt"
    );
    // A put that ignores the lease keeps the one rebuilt.
    c.put("leased", "w", Some(PutOptions::new().with_ignore_lease()))
        .await?;
    assert_eq!(c.get("leased", None).await?.kvs()[0].lease(), lease);
    c.lease_revoke(lease).await?;
    assert!(c.get("leased", None).await?.kvs().is_empty());
    assert_eq!(c.get("detached", None).await?.kvs()[0].value(), b"w");
    Ok(())
}

/// The store's memory is held in 4 KiB pages, not transparent huge pages: with them its
/// allocator's arenas took memory 2 MiB at a time (27 MiB resident idle, against 16).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_process_runs_without_transparent_huge_pages() -> anyhow::Result<()> {
    let server = start(Kind::Ferry, &[]).await?;
    let mut c = server.client().await?;
    for i in 0..2_000 {
        c.put(format!("thp/{i:05}"), vec![b'v'; 1024], None).await?;
    }
    let pid = server
        .pid()
        .ok_or_else(|| anyhow::anyhow!("the store is not running"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "{status}"
    );
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let huge_kib: u64 = smaps
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no AnonHugePages in {smaps}"))?;
    assert_eq!(huge_kib, 0, "anonymous huge pages in the store's memory");
    Ok(())
}
