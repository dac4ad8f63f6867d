//! Maintenance and Cluster services, against `ferry store` and a real etcd 3.4.

mod common;

use common::{assert_etcd_error, Server};
use etcd_client::{AlarmAction, AlarmOptions, AlarmType, DeleteOptions, GetOptions};
use sha2::{Digest, Sha256};
use tonic::Code;

against_both!(&[];
    status_reports_a_usable_version_and_self_as_leader,
    member_list_is_this_one_member,
    hash_kv_is_stable_for_a_revision,
    defragment_reclaims_space,
    snapshot_stream_ends_with_its_sha256,
    alarms_are_empty_on_a_healthy_store,
    an_alarm_for_member_zero_is_recorded_and_cleared,
    defragment_and_move_leader_to_self_answer_without_a_header,
);

against_both_quota!();

/// Runs the NOSPACE case with a small quota on both backends.
#[macro_export]
macro_rules! against_both_quota {
    () => {
        mod quota_on_ferry {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nospace_alarm_blocks_puts_until_disarmed() -> anyhow::Result<()> {
                let s = super::common::start(
                    super::common::Kind::Ferry,
                    &["--quota-backend-bytes", "4194304"],
                )
                .await?;
                super::nospace_alarm_blocks_puts_until_disarmed(&s).await
            }
        }
        mod quota_on_etcd {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nospace_alarm_blocks_puts_until_disarmed() -> anyhow::Result<()> {
                let s = super::common::start(
                    super::common::Kind::Etcd,
                    &["--quota-backend-bytes", "4194304"],
                )
                .await?;
                super::nospace_alarm_blocks_puts_until_disarmed(&s).await
            }
        }
    };
}

async fn status_reports_a_usable_version_and_self_as_leader(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("k", "v", None).await?;
    let s = c.status().await?;
    let mut parts = s.version().split('.').map(|p| p.parse::<u32>());
    let (major, minor) = (parts.next(), parts.next());
    assert!(
        matches!((major, minor), (Some(Ok(3)), Some(Ok(m))) if m >= 4),
        "version {:?} is not a 3.4+ etcd version",
        s.version()
    );
    assert!(s.db_size() > 0);
    let header = s
        .header()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no header"))?;
    assert_eq!(
        s.leader(),
        header.member_id(),
        "a single member leads itself"
    );
    assert_eq!(header.revision(), 2);
    assert!(s.raft_index() >= 1);
    Ok(())
}

async fn member_list_is_this_one_member(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let list = c.member_list().await?;
    assert_eq!(list.members().len(), 1);
    let m = &list.members()[0];
    assert_eq!(m.name(), "default");
    assert_eq!(m.client_urls(), [format!("http://{}", server.endpoint())]);
    assert_eq!(Some(m.id()), list.header().map(|h| h.member_id()));
    Ok(())
}

async fn hash_kv_is_stable_for_a_revision(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    c.put("a", "1", None).await?;
    c.put("b", "2", None).await?;
    let first = c.hash_kv(3).await?;
    c.put("c", "3", None).await?;
    let again = c.hash_kv(3).await?;
    assert_eq!(
        first.hash(),
        again.hash(),
        "history up to a revision does not change"
    );
    let later = c.hash_kv(4).await?;
    assert_ne!(
        first.hash(),
        later.hash(),
        "a new revision changes the hash"
    );
    c.compact(2, None).await?;
    assert_eq!(c.hash_kv(0).await?.compact_version(), 2);
    assert_etcd_error(
        c.hash_kv(1).await,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    Ok(())
}

async fn defragment_reclaims_space(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let value = vec![b'v'; 16 * 1024];
    for i in 0..300 {
        c.put(format!("big/{i:04}"), value.clone(), None).await?;
    }
    let r = c
        .delete("big/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    c.compact(r.header().map(|h| h.revision()).unwrap_or(0), None)
        .await?;
    let before = c.status().await?.db_size();
    c.defragment().await?;
    let after = c.status().await?.db_size();
    assert!(
        after < before,
        "defragment did not shrink the backend: {before} -> {after}"
    );
    c.put("still", "works", None).await?;
    assert_eq!(c.get("still", None).await?.kvs()[0].value(), b"works");
    Ok(())
}

async fn snapshot_stream_ends_with_its_sha256(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    for i in 0..50 {
        c.put(format!("s/{i}"), format!("{i}"), None).await?;
    }
    let mut stream = c.snapshot().await?;
    let mut bytes = Vec::new();
    let mut last_remaining = None;
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(chunk.blob());
        last_remaining = Some(chunk.remaining_bytes());
    }
    assert_eq!(
        last_remaining,
        Some(0),
        "the last chunk has nothing remaining"
    );
    // etcdctl recognises the digest by the length: whole 512-byte pages plus 32 bytes.
    assert_eq!(bytes.len() % 512, 32, "snapshot length {}", bytes.len());
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    assert_eq!(Sha256::digest(body).as_slice(), digest);
    Ok(())
}

async fn alarms_are_empty_on_a_healthy_store(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
    assert!(alarms.alarms().is_empty());
    Ok(())
}

async fn nospace_alarm_blocks_puts_until_disarmed(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let value = vec![b'q'; 512 * 1024];
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..64 {
        match c.put(format!("q/{i:02}"), value.clone(), None).await {
            Ok(_) => acknowledged.push(i),
            Err(e) => {
                refused = Some(common::status(e));
                break;
            }
        }
    }
    let refused = refused.ok_or_else(|| anyhow::anyhow!("64 puts of 512 KiB fit a 4 MiB quota"))?;
    assert_eq!(
        (refused.code(), refused.message()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        )
    );
    let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);
    let member = alarms.alarms()[0].member_id();
    // While the alarm is raised even a tiny put fails; reads and deletes work.
    assert_etcd_error(
        c.put("tiny", "x", None).await,
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    let count = c
        .get(
            "q/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?
        .count();
    // Every acknowledged put is kept. etcd may also keep the put it refused: its apply-time
    // quota check stores the put and then answers NOSPACE; ferry refuses before applying.
    let stored = c
        .get("q/", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await?;
    for i in &acknowledged {
        let key = format!("q/{i:02}");
        assert!(
            stored.kvs().iter().any(|kv| kv.key() == key.as_bytes()),
            "acknowledged {key} lost"
        );
    }
    let allowed = match server.kind() {
        common::Kind::Ferry => acknowledged.len()..=acknowledged.len(),
        common::Kind::Etcd => acknowledged.len()..=acknowledged.len() + 1,
    };
    assert!(
        allowed.contains(&(count as usize)),
        "{count} stored, {} acknowledged",
        acknowledged.len()
    );
    let r = c
        .delete("q/", Some(DeleteOptions::new().with_prefix()))
        .await?;
    c.compact(r.header().map(|h| h.revision()).unwrap_or(0), None)
        .await?;
    c.defragment().await?;
    // Disarming names the member, as `etcdctl alarm disarm` does; another id disarms nothing.
    let for_member = |id: u64| {
        let mut opts = AlarmOptions::new();
        opts.with_member(id);
        Some(opts)
    };
    c.alarm(
        AlarmAction::Deactivate,
        AlarmType::Nospace,
        for_member(member + 1),
    )
    .await?;
    assert_eq!(
        c.alarm(AlarmAction::Get, AlarmType::None, None)
            .await?
            .alarms()
            .len(),
        1
    );
    c.alarm(
        AlarmAction::Deactivate,
        AlarmType::Nospace,
        for_member(member),
    )
    .await?;
    assert!(c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await?
        .alarms()
        .is_empty());
    c.put("tiny", "x", None).await?;
    Ok(())
}

/// What clients send to raise an alarm "for all members": member id 0.
async fn an_alarm_for_member_zero_is_recorded_and_cleared(server: &Server) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    let every_member = || {
        let mut opts = AlarmOptions::new();
        opts.with_member(0);
        Some(opts)
    };
    let raised = c
        .alarm(AlarmAction::Activate, AlarmType::Nospace, every_member())
        .await?;
    assert_eq!(raised.alarms().len(), 1);
    assert_eq!(raised.alarms()[0].member_id(), 0);
    let listed = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
    assert_eq!(listed.alarms().len(), 1);
    assert_eq!(listed.alarms()[0].member_id(), 0);
    assert_eq!(listed.alarms()[0].alarm(), AlarmType::Nospace);
    assert_etcd_error(
        c.put("k", "v", None).await,
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    c.alarm(AlarmAction::Deactivate, AlarmType::Nospace, every_member())
        .await?;
    assert!(c
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await?
        .alarms()
        .is_empty());
    c.put("k", "v", None).await?;
    Ok(())
}

async fn defragment_and_move_leader_to_self_answer_without_a_header(
    server: &Server,
) -> anyhow::Result<()> {
    let mut c = server.client().await?;
    assert!(c.defragment().await?.header().is_none());
    let leader = c.status().await?.leader();
    assert!(c.move_leader(leader).await?.header().is_none());
    Ok(())
}
