//! Migration through snapshots in both directions: a ferry store's snapshot is an etcd
//! backend database that `etcdctl snapshot status/restore` read and a real etcd serves, and
//! `ferry store restore` takes etcd's snapshots (and a database copied from a data dir).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ferry_bin, start, Kind, Server};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, Permission, PutOptions};

/// Revisions the workload's history is compared at (it compacts at 100).
const PAST: [i64; 3] = [100, 150, 250];
const COMPACTED_AT: i64 = 100;

/// Writes a history with overwrites, a big value (bbolt overflow pages), enough keys for
/// branch pages, a lease with a key, a compaction, users and roles, and ends with a delete.
async fn workload(c: &mut Client) -> anyhow::Result<i64> {
    c.put("app/a", "1", None).await?;
    c.put("app/b", "2", None).await?;
    c.put("app/a", "1b", None).await?;
    let lease = c.lease_grant(600, None).await?.id();
    c.put("app/leased", "l", Some(PutOptions::new().with_lease(lease)))
        .await?;
    c.put("app/big", "x".repeat(20_000), None).await?;
    for i in 0..300 {
        c.put(format!("many/{i:04}"), format!("value {i}"), None)
            .await?;
    }
    c.compact(COMPACTED_AT, None).await?;
    c.put("app/a", "1c", None).await?;
    c.user_add("alice", "secret", None).await?;
    c.role_add("reader").await?;
    c.role_grant_permission("reader", Permission::read("app/").with_prefix())
        .await?;
    c.user_grant_role("alice", "reader").await?;
    c.delete("app/b", None).await?;
    Ok(lease)
}

type Kv = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// What a user can observe of a store after the workload.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    now: Vec<Kv>,
    past: Vec<Vec<Kv>>,
    compacted_refused: bool,
    lease_ttl: i64,
    lease_keys: Vec<Vec<u8>>,
    users: Vec<String>,
    role_perms: Vec<(i32, Vec<u8>, Vec<u8>)>,
}

async fn observe(c: &mut Client, lease: i64) -> anyhow::Result<Observed> {
    let all = |rev: i64| {
        let opts = GetOptions::new().with_from_key();
        if rev > 0 {
            opts.with_revision(rev)
        } else {
            opts
        }
    };
    let kvs = |r: &etcd_client::GetResponse| -> Vec<Kv> {
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                )
            })
            .collect()
    };
    let now = c.get(vec![0u8], Some(all(0))).await?;
    let mut past = Vec::new();
    for rev in PAST {
        past.push(kvs(&c.get(vec![0u8], Some(all(rev))).await?));
    }
    let compacted_refused = c.get(vec![0u8], Some(all(COMPACTED_AT - 1))).await.is_err();
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await?;
    let mut users = c.user_list().await?.users().to_vec();
    assert!(now.kvs().len() > 300, "the workload's keys are there");
    assert!(compacted_refused, "reads below the compaction are refused");
    users.sort();
    let role = c.role_get("reader").await?;
    Ok(Observed {
        revision: now.header().map(|h| h.revision()).unwrap_or(0),
        now: kvs(&now),
        past,
        compacted_refused,
        lease_ttl: ttl.granted_ttl(),
        lease_keys: ttl.keys().to_vec(),
        users,
        role_perms: role
            .permissions()
            .iter()
            .map(|p| (p.get_type(), p.key().to_vec(), p.range_end().to_vec()))
            .collect(),
    })
}

fn etcdctl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(ferry_testkit::etcdctl_binary()?)
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `etcdctl snapshot save` from `server` into `file`.
fn snapshot_save(server: &Server, file: &Path) -> anyhow::Result<()> {
    etcdctl(&[
        "--endpoints",
        &endpoint(server),
        "snapshot",
        "save",
        &path(file),
    ])?;
    Ok(())
}

fn endpoint(server: &Server) -> String {
    server.endpoint().trim_start_matches("http://").to_string()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn ferry_restore(snapshot: &Path, data_dir: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(ferry_bin())
        .args(["store", "restore", "--snapshot"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .output()
        .expect("running ferry store restore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ferry_snapshot_restores_a_real_etcd_member() -> anyhow::Result<()> {
    let ferry = start(Kind::Ferry, &[]).await?;
    let mut c = ferry.client().await?;
    let lease = workload(&mut c).await?;
    let before = observe(&mut c, lease).await?;
    assert_eq!(before.lease_keys, vec![b"app/leased".to_vec()]);
    assert_eq!(before.users, vec!["alice".to_string()]);

    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("ferry.db");
    snapshot_save(&ferry, &snap)?;
    let status: serde_json::Value = serde_json::from_str(&etcdctl(&[
        "snapshot",
        "status",
        &path(&snap),
        "-w",
        "json",
    ])?)?;
    assert_eq!(status["revision"], before.revision, "{status}");
    assert!(status["totalKey"].as_i64().unwrap_or(0) > 300, "{status}");

    let data_dir = dir.path().join("etcd");
    let peer = format!("http://127.0.0.1:{}", ferry_testkit::free_port()?);
    etcdctl(&[
        "snapshot",
        "restore",
        &path(&snap),
        "--data-dir",
        &path(&data_dir),
        "--name",
        "default",
        "--initial-cluster",
        &format!("default={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ])?;
    let etcd = Server::on(Kind::Etcd, ferry_bin(), &data_dir, &[]).await?;
    let mut e = etcd.client().await?;
    assert_eq!(observe(&mut e, lease).await?, before);
    // The restored member goes on from the same revision.
    let put = e.put("after", "restore", None).await?;
    assert_eq!(
        put.header().map(|h| h.revision()),
        Some(before.revision + 1)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_snapshot_restores_into_ferry() -> anyhow::Result<()> {
    let mut etcd = start(Kind::Etcd, &[]).await?;
    let mut c = etcd.client().await?;
    let lease = workload(&mut c).await?;
    let before = observe(&mut c, lease).await?;

    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("etcd.db");
    snapshot_save(&etcd, &snap)?;
    let target = dir.path().join("ferry");
    let out = ferry_restore(&snap, &target, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = Server::ferry_on(ferry_bin(), &target, &[]).await?;
    let mut f = restored.client().await?;
    assert_eq!(observe(&mut f, lease).await?, before);
    let put = f.put("after", "restore", None).await?;
    assert_eq!(
        put.header().map(|h| h.revision()),
        Some(before.revision + 1)
    );
    drop(restored);

    // A database copied out of a stopped member's data dir has no digest: refused unless
    // asked for, as etcdctl does, then restored like a snapshot.
    etcd.terminate()?;
    let copied = dir.path().join("member-db");
    std::fs::copy(etcd.data_dir().join("member/snap/db"), &copied)?;
    let target = dir.path().join("from-db");
    let out = ferry_restore(&copied, &target, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--skip-hash-check"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!target.exists(), "a refused restore creates nothing");
    let out = ferry_restore(&copied, &target, &["--skip-hash-check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = Server::ferry_on(ferry_bin(), &target, &[]).await?;
    let mut f = restored.client().await?;
    assert_eq!(observe(&mut f, lease).await?, before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_etcd_snapshot_is_refused_and_creates_nothing() -> anyhow::Result<()> {
    let etcd = start(Kind::Etcd, &[]).await?;
    let mut c = etcd.client().await?;
    for i in 0..50 {
        c.put(format!("k{i}"), "v", None).await?;
    }
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("etcd.db");
    snapshot_save(&etcd, &snap)?;
    let good = std::fs::read(&snap)?;

    let cases: Vec<(&str, Vec<u8>, &[&str], &str)> = vec![
        (
            "flipped byte",
            flip(&good, 5000),
            &[],
            "sha256 digest does not match",
        ),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            &[],
            "no sha256 digest",
        ),
        (
            // Past the digest check, the database itself is checked.
            "torn meta pages",
            flip(&flip(&good[..good.len() - 32], 16 + 20), 4096 + 16 + 20),
            &["--skip-hash-check"],
            "meta page checksum does not match",
        ),
        (
            "not a database",
            vec![7u8; 4096],
            &["--skip-hash-check"],
            "neither an etcd snapshot",
        ),
    ];
    for (what, bytes, flags, message) in cases {
        let file: PathBuf = dir.path().join(what.replace(' ', "-"));
        std::fs::write(&file, bytes)?;
        let target = dir
            .path()
            .join(format!("{}-restored", what.replace(' ', "-")));
        let out = ferry_restore(&file, &target, flags);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(stderr.contains(message), "{what}: {stderr}");
        assert!(
            !target.exists(),
            "{what}: a refused restore creates nothing"
        );
    }
    Ok(())
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[at] ^= 0xff;
    out
}
