//! `ferry store`'s write-ahead log across crashes: after kill -9, a torn last write (half a
//! frame, or a cut file) is set aside and every complete acknowledged write is served; damage
//! to acknowledged data (a flipped byte in an earlier frame) refuses the start with the file
//! and offset, and changes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{start, Kind, Server};

/// Writes `n` keys one by one (each acknowledged), then kills the server with SIGKILL.
async fn write_then_kill(server: &mut Server, prefix: &str, n: usize) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for i in 0..n {
        c.put(format!("{prefix}/{i:04}"), format!("value-{i}"), None)
            .await?;
    }
    server.kill();
    Ok(())
}

async fn count(server: &Server, prefix: &str) -> anyhow::Result<usize> {
    let mut c = server.client().await?;
    let got = c
        .get(
            format!("{prefix}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    for kv in got.kvs() {
        let i: usize = kv.key_str()?.rsplit('/').next().unwrap_or("x").parse()?;
        assert_eq!(kv.value_str()?, format!("value-{i}"));
    }
    Ok(got.kvs().len())
}

fn wal_dir(server: &Server) -> PathBuf {
    server.data_dir().join(ferry_store::wal::WAL_DIR)
}

/// A segment's frames: sequence number and byte range.
type Frames = Vec<(u64, std::ops::Range<usize>)>;

/// The last segment and its frames.
fn last_segment(server: &Server) -> anyhow::Result<(PathBuf, Frames)> {
    let segments = ferry_store::wal::segments(&wal_dir(server))?;
    let last = segments
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no write-ahead log segment"))?;
    let frames = ferry_store::wal::frames(&last)?;
    Ok((last, frames))
}

fn patch(path: &Path, at: usize, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all_at(bytes, at as u64)?;
    file.sync_all()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_write_is_set_aside_and_every_acknowledged_write_is_served(
) -> anyhow::Result<()> {
    let mut server = start(Kind::Ferry, &[]).await?;
    write_then_kill(&mut server, "torn", 50).await?;
    // Half of a copy of the last frame after it: a write torn by the crash.
    let (segment, frames) = last_segment(&server)?;
    let (_, last) = frames
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no frame"))?;
    let bytes = std::fs::read(&segment)?;
    let half = &bytes[last.start..last.start + (last.end - last.start) / 2];
    patch(&segment, last.end, half)?;
    server.restart().await?;
    assert_eq!(count(&server, "torn").await?, 50);
    let aside: Vec<_> = std::fs::read_dir(wal_dir(&server))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("torn-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the torn write is kept aside for inspection"
    );
    // The store goes on: more writes, another crash, all of it back.
    write_then_kill(&mut server, "after", 20).await?;
    server.restart().await?;
    assert_eq!(count(&server, "torn").await?, 50);
    assert_eq!(count(&server, "after").await?, 20);

    // A file cut in the middle of its last frame: that write never completed, so it was
    // never acknowledged; everything before it is served. (If a checkpoint made it durable in
    // the backend before the cut, it is served too.)
    write_then_kill(&mut server, "cut", 10).await?;
    let (segment, frames) = last_segment(&server)?;
    let (_, last) = frames
        .last()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no frame"))?;
    let file = std::fs::OpenOptions::new().write(true).open(&segment)?;
    file.set_len((last.start + (last.end - last.start) / 2) as u64)?;
    drop(file);
    server.restart().await?;
    let cut = count(&server, "cut").await?;
    assert!((9..=10).contains(&cut), "{cut} of 10");
    assert_eq!(count(&server, "torn").await?, 50);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_to_acknowledged_writes_refuses_the_start() -> anyhow::Result<()> {
    let mut server = start(Kind::Ferry, &[]).await?;
    write_then_kill(&mut server, "k", 30).await?;
    let (segment, frames) = last_segment(&server)?;
    assert!(frames.len() >= 3, "{} frames", frames.len());
    // A flipped byte inside an earlier frame: intact frames follow it.
    let (_, middle) = frames[frames.len() / 2].clone();
    let at = middle.start + 30;
    let before = std::fs::read(&segment)?;
    patch(&segment, at, &[before[at] ^ 0xff])?;
    let damaged = std::fs::read(&segment)?;
    let port = ferry_testkit::free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(common::ferry_bin())
        .args(["store", "--data-dir"])
        .arg(server.data_dir())
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("the store started on a damaged log");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut stderr)?;
    }
    assert!(!status.success());
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    assert!(
        stderr.contains("write-ahead log")
            && stderr.contains(&name)
            && stderr.contains(&format!("byte {}", middle.start)),
        "{stderr}"
    );
    // Nothing changed: the log is as it was, nothing set aside.
    assert_eq!(std::fs::read(&segment)?, damaged);
    let aside = std::fs::read_dir(wal_dir(&server))?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("torn-"));
    assert!(!aside);
    Ok(())
}

/// Once writes stop, the store makes them durable in its database and trims the log by
/// itself, without waiting for another write: a log that rotated past one segment (16 MiB)
/// is back to one segment, and a crash afterwards loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_store_checkpoints_its_log_without_another_write() -> anyhow::Result<()> {
    let mut server = start(Kind::Ferry, &[]).await?;
    let mut c = server.client().await?;
    let value = vec![b'v'; 1024 * 1024];
    for i in 0..18 {
        c.put(format!("big/{i:02}"), value.clone(), None).await?;
    }
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let segments = ferry_store::wal::segments(&wal_dir(&server))?;
        if segments.len() == 1 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "still {} log segments 10 s after the last write",
            segments.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    server.restart().await?;
    let mut c = server.client().await?;
    for i in 0..18 {
        let got = c.get(format!("big/{i:02}"), None).await?;
        assert!(
            got.kvs()
                .first()
                .is_some_and(|kv| kv.value() == value.as_slice()),
            "big/{i:02} lost"
        );
    }
    Ok(())
}

/// Once the log has moved into a reused segment (a checkpointed one, its old frames left
/// behind the new), a kill -9 loses nothing and sets nothing aside: the old frames after the
/// last batch are neither replayed nor taken for a torn write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_in_a_reused_segment_replays_exactly_its_own_batches() -> anyhow::Result<()> {
    let mut server = start(Kind::Ferry, &[]).await?;
    let mut c = server.client().await?;
    // Sizes vary so that the old frames do not line up with the new ones; sixteen keys and
    // compactions keep the database small (an unoptimised build reads large rows slowly).
    let value = |i: usize| format!("{i:06}").repeat(20_000 + (i * 7919) % 40_000);
    let mut written = 0;
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let put = c
            .put(format!("big/{:02}", written % 16), value(written), None)
            .await?;
        written += 1;
        if written % 32 == 0 {
            if let Some(header) = put.header() {
                c.compact(header.revision(), None).await?;
            }
        }
        let segments = ferry_store::wal::segments(&wal_dir(&server))?;
        let last = segments.last().cloned().unwrap_or_default();
        let frames = if ferry_store::wal::is_reused(&last)? {
            ferry_store::wal::frames(&last)?
        } else {
            Vec::new()
        };
        if let Some((_, own)) = frames.get(2) {
            let bytes = std::fs::read(&last)?;
            anyhow::ensure!(
                bytes[own.end..].iter().any(|&b| b != 0),
                "a reused segment keeps its old frames after its own"
            );
            break;
        }
        anyhow::ensure!(
            Instant::now() < until,
            "no reused log segment after {written} writes"
        );
    }
    server.kill();
    server.restart().await?;
    let mut c = server.client().await?;
    for key in 0..16 {
        let newest = (0..written).rev().find(|i| i % 16 == key).unwrap_or(key);
        let got = c.get(format!("big/{key:02}"), None).await?;
        assert!(
            got.kvs()
                .first()
                .is_some_and(|kv| kv.value() == value(newest).as_bytes()),
            "big/{key:02} is not write {newest}"
        );
    }
    let aside = std::fs::read_dir(wal_dir(&server))?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("torn-"));
    assert!(!aside, "the old frames were taken for a torn write");
    Ok(())
}
