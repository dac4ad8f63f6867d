//! etcd's backend layout (bucket names, key and value encodings) for the parts a snapshot
//! carries, shared by the export and the import.

use prost::Message;

/// Key revisions → `mvccpb.KeyValue`.
pub const KEY: &[u8] = b"key";
/// Consistent index and compaction revisions.
pub const META: &[u8] = b"meta";
/// Lease id → `leasepb.Lease`.
pub const LEASE: &[u8] = b"lease";
/// Membership, rewritten by `etcdctl snapshot restore`.
pub const MEMBERS: &[u8] = b"members";
/// Removed member ids, rewritten by `etcdctl snapshot restore`.
pub const MEMBERS_REMOVED: &[u8] = b"members_removed";
/// The cluster version.
pub const CLUSTER: &[u8] = b"cluster";
/// Raised alarms: encoded `AlarmMember` → empty.
pub const ALARM: &[u8] = b"alarm";
/// `authEnabled` and `authRevision`.
pub const AUTH: &[u8] = b"auth";
/// User name → `authpb.User`.
pub const AUTH_USERS: &[u8] = b"authUsers";
/// Role name → `authpb.Role`.
pub const AUTH_ROLES: &[u8] = b"authRoles";

/// Every bucket an etcd 3.4 backend has.
pub const BUCKETS: [&[u8]; 10] = [
    KEY,
    META,
    LEASE,
    MEMBERS,
    MEMBERS_REMOVED,
    CLUSTER,
    ALARM,
    AUTH,
    AUTH_USERS,
    AUTH_ROLES,
];

/// `meta`: the raft index of the last applied entry, 8 bytes big-endian.
pub const CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// `meta`: the revision a compaction was requested at (revision bytes).
pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
/// `meta`: the revision the last compaction finished at (revision bytes).
pub const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
/// `auth`: one byte, 1 while authentication is enabled.
pub const AUTH_ENABLED: &[u8] = b"authEnabled";
/// `auth`: the auth revision, 8 bytes big-endian.
pub const AUTH_REVISION: &[u8] = b"authRevision";
/// `cluster`: the cluster version, as text.
pub const CLUSTER_VERSION: &[u8] = b"clusterVersion";

/// Length of a revision key: main (8), `_`, sub (8).
const REV_LEN: usize = 17;
/// Appended to the revision key of a delete.
const TOMBSTONE: u8 = b't';

/// The `key` bucket key of change `sub` of revision `main`.
pub fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(REV_LEN + 1);
    out.extend_from_slice(&(main as u64).to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&(sub as u64).to_be_bytes());
    if tombstone {
        out.push(TOMBSTONE);
    }
    out
}

/// A decoded `key` bucket key: (main, sub, tombstone).
pub fn parse_rev_key(bytes: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match bytes.len() {
        REV_LEN => false,
        n if n == REV_LEN + 1 && bytes[REV_LEN] == TOMBSTONE => true,
        _ => return None,
    };
    let main = u64::from_be_bytes(bytes[..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(bytes[9..17].try_into().ok()?) as i64;
    Some((main, sub, tombstone))
}

/// etcd's `leasepb.Lease`, as stored in the `lease` bucket.
#[derive(Clone, PartialEq, Message)]
pub struct StoredLease {
    /// The lease id.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The granted TTL in seconds.
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// Seconds left when last checkpointed (etcd 3.4 checkpoints only when asked to).
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// etcd's `etcdserverpb.AlarmMember`, the key of the `alarm` bucket.
#[derive(Clone, PartialEq, Message)]
pub struct StoredAlarm {
    /// The member the alarm is raised for (0: all).
    #[prost(uint64, tag = "1")]
    pub member_id: u64,
    /// `NOSPACE` = 1, `CORRUPT` = 2.
    #[prost(int32, tag = "2")]
    pub alarm: i32,
}

/// The alarm type etcd calls `NOSPACE`.
pub const ALARM_NOSPACE: i32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip_and_sort_by_revision() {
        let a = rev_key(2, 0, false);
        let b = rev_key(2, 1, true);
        let c = rev_key(256, 0, false);
        assert!(a < b && b < c);
        assert_eq!(parse_rev_key(&b), Some((2, 1, true)));
        assert_eq!(parse_rev_key(&c), Some((256, 0, false)));
        assert_eq!(parse_rev_key(b"short"), None);
        let mut bad = rev_key(1, 0, false);
        bad.push(b'x');
        assert_eq!(parse_rev_key(&bad), None);
    }
}
